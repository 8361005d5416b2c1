"""The placement vocabulary: where in a model an adapter goes.

`BlockSites` is what adarec knows about one transformer block (which module plays which role);
`Site` is one place an adapter is attached, chosen from it; `Plan` is every site of one spec in one
model, printable as a table so a user can check placement before training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from .stacks import StackInfo

SUBLAYERS = ("mha", "cross", "ffn")
"""Sublayer kinds of a block: self-attention, cross-attention (decoders of encoder-decoders) and
feed-forward."""
PROJECTION_ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")
"""Projections a weight-level method can target: query/key/value/output of the self-attention and
the entry/exit of the feed-forward sublayer."""
ROLES = ("mha_in", "mha_out", "ffn_in", "ffn_out", "q", "k", "v")
"""Names a `BlockSites` resolves: entry and exit of each sublayer, and q/k/v."""


@dataclass(frozen=True)
class SublayerSites:
    """One sublayer of a block: its kind, its first entry projection, its exit (the projection
    whose output the residual add takes) and all its entry projections."""

    kind: str
    entry: str
    exit: str
    entries: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlockSites:
    """What adarec knows about one block: full module names of its roles (``None`` where a role
    does not exist or was not settled), its sublayers and its residual width.

    ``source`` says how it was found (``"layout table"`` or ``"trace"``); ``fused`` lists the
    roles one projection plays (``("q", "k", "v")`` for GPT-2's ``c_attn``) and ``fused_widths``
    their widths in its output, when known; ``unresolved`` says why a role was left open, and
    ``describe`` what was seen (the dry run's calls), for error messages.
    """

    stack: str
    index: int
    names: dict[str, str | None]
    width: int | None = None
    source: str = "layout table"
    sublayers: tuple[SublayerSites, ...] = ()
    fused: tuple[str, ...] = ()
    fused_widths: tuple[int, ...] = ()
    unresolved: dict[str, str] = field(default_factory=dict)
    describe: str = ""

    @property
    def name(self) -> str:
        """The block module's full name."""
        return f"{self.stack}.{self.index}" if self.stack else str(self.index)


@dataclass(frozen=True)
class Site:
    """One place an adapter goes.

    ``target`` is the module the adapter is attached to (its output is what the adapter changes),
    ``entry`` the module whose input is the sublayer's input (an adapter beside the sublayer reads
    it; equal to ``target`` for a projection). ``role`` is the sublayer (``mha``, ``cross``,
    ``ffn``), the projection role (``q`` ... ``ffn_out``), ``module`` for an explicit
    ``target_modules`` match, or what a model-level method calls its host. On a fused projection
    (GPT-2's ``c_attn``) ``fused`` lists the roles it plays and ``roles`` the ones this site
    serves; ``fused_widths`` are the widths of the parts of its output, in ``fused`` order, when
    they are known (a method that touches only some parts needs them).
    """

    target: str
    entry: str
    role: str
    block: int | None = None
    stack: str | None = None
    roles: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()
    fused_widths: tuple[int, ...] = ()


@dataclass(frozen=True)
class PlannedSite:
    """A site with the facts shown in the plan table."""

    site: Site
    module_type: str
    d_in: int
    d_out: int


@dataclass
class Plan(Sequence[Site]):
    """Every site of one spec in one model, in order; ``print(plan)`` shows it as a table.

    Iterating gives the `Site` objects; ``rows`` also has each module's type and widths, and
    ``source`` says how the sublayers were found (layout table, trace, ``target_modules``, or
    the method's own placement for model-level methods).
    """

    method: str
    rows: list[PlannedSite] = field(default_factory=list)
    source: str = ""
    residual: dict[str, int] = field(default_factory=dict)
    """Residual width per block stack, when known."""
    stacks: dict[str, StackInfo] = field(default_factory=dict)
    """The block stacks a whole-model method was placed on, by name."""

    @overload
    def __getitem__(self, i: int) -> Site: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Site]: ...

    def __getitem__(self, i: int | slice) -> Site | Sequence[Site]:
        if isinstance(i, slice):
            return [r.site for r in self.rows[i]]
        return self.rows[i].site

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Site]:
        return (r.site for r in self.rows)

    def table(self) -> str:
        head = ("block", "role", "module", "type", "in -> out", "method")
        body = []
        for r in self.rows:
            s = r.site
            block = "" if s.block is None else (f"{s.stack}.{s.block}" if s.stack else str(s.block))
            role = s.role if not s.roles or s.roles == (s.role,) else "+".join(s.roles)
            if s.fused:
                split = " = " + "+".join(map(str, s.fused_widths)) if s.fused_widths else ""
                role += f" (fused {'/'.join(s.fused)}{split})"
            body.append((block, role, s.target, r.module_type, f"{r.d_in} -> {r.d_out}",
                         self.method))
        widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in (head, *body)]
        lines.insert(1, "-" * max(len(line) for line in lines))
        footer = f"{len(self.rows)} site(s); sublayers found by: {self.source or 'n/a'}"
        if self.residual:
            footer += "; residual width " + ", ".join(
                f"{k or '<root>'}={v}" for k, v in self.residual.items())
        return "\n".join([*lines, footer])

    def __str__(self) -> str:
        return self.table()
