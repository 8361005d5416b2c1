"""A tiny resumable training run for tests/test_training_state.py (run as a subprocess).

usage: resumable_run.py STATE_DIR OUT_FILE [--resume] [--die-at STEP] [--die-in-save STEP]
Prints "step N" after each optimiser step; saves the training state every 2 steps and at
each epoch end; writes the final weights to OUT_FILE (safetensors).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from adarec.training_state import STATE_JSON, load_training_state, save_training_state

EPOCHS, BATCHES, EVERY = 3, 4, 2


def main(argv: list[str]) -> None:
    state_dir, out = Path(argv[0]), argv[1]
    die_at = int(argv[argv.index("--die-at") + 1]) if "--die-at" in argv else -1
    die_in_save = int(argv[argv.index("--die-in-save") + 1]) if "--die-in-save" in argv else -1
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    data = torch.randn(BATCHES * 8, 5)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    epoch, step, order = 0, 0, None
    if "--resume" in argv and (state_dir / STATE_JSON).exists():
        extra = load_training_state(state_dir, model=model, optimizer=optimizer,
                                    scheduler=scheduler)
        epoch, step, order = extra["epoch"], extra["step"], extra["order"]
    original = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if self.name == STATE_JSON and step == die_in_save:
            os.kill(os.getpid(), signal.SIGKILL)  # tensors written, JSON not: mid-save
        return original(self, data)

    Path.write_bytes = write_bytes  # type: ignore[method-assign]
    while epoch < EPOCHS:
        if order is None:
            order = torch.randperm(BATCHES).tolist()
        done = step - epoch * BATCHES
        for b in order[done:]:
            loss = model(data[b * 8:(b + 1) * 8]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"step {step}", flush=True)
            if step == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if step % EVERY == 0 and step % BATCHES:
                save_training_state(state_dir, model=model, optimizer=optimizer,
                                    scheduler=scheduler,
                                    extra={"epoch": epoch, "step": step, "order": order})
        scheduler.step()
        epoch, order = epoch + 1, None
        save_training_state(state_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                            extra={"epoch": epoch, "step": step, "order": order})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)


if __name__ == "__main__":
    main(sys.argv[1:])
