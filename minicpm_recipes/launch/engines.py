"""Plan a training launch: which engine, the exact argv and the environment. Pure: no I/O, no heavy imports.

Three engines, chosen by `choose_engine`:

| engine | when | argv |
| --- | --- | --- |
| `llamafactory` | one process on one node | `llamafactory-cli train CONFIG [key=value ...]` |
| `torchrun` | DeepSpeed, several processes, several nodes, or `FORCE_TORCHRUN=1` | `torchrun --nnodes N --node_rank R --nproc_per_node P --master_addr A --master_port PORT -m llamafactory.launcher CONFIG [key=value ...]` |
| `accelerate` | an accelerate (FSDP/FSDP2) config is known for the YAML | `accelerate launch --config_file ACC --num_machines N --num_processes N*P --machine_rank R [--main_process_ip A] --main_process_port PORT -m llamafactory.launcher CONFIG [key=value ...]` |

torchrun is called directly rather than through `FORCE_TORCHRUN=1 llamafactory-cli train`, which runs the same
torchrun line but joins its arguments with spaces and splits them again (a path with a space breaks) and turns a
failed run into a traceback; the variables that route would read (`NNODES`, `NODE_RANK`, `NPROC_PER_NODE`,
`MASTER_ADDR`, `MASTER_PORT`, `FORCE_TORCHRUN`) are honoured the same way. LLaMA-Factory's own torchrun
environment tweaks (`PYTORCH_CUDA_ALLOC_CONF`, `TORCH_NCCL_AVOID_RECORD_STREAMS`, unless `OPTIM_TORCH=0`) are kept.

`RDZV_ID` (with `MAX_RESTARTS`, `MIN_NNODES`/`MAX_NNODES`) switches torchrun to an elastic c10d rendezvous, as
llamafactory-cli does.

Where each number comes from, first match wins:
  --flag > environment variable > the YAML's rendered launch hint (its `# Run:` line / per-node script) >
  the accelerate config > the visible GPU count (processes per node) > 1.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError

ENGINES = ("llamafactory", "torchrun", "accelerate")
LAUNCHER_MODULE = "llamafactory.launcher"
# the variables a user or a scheduler sets; all honoured
TOPOLOGY_ENV = ("NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN")


@dataclass(frozen=True)
class Hints:
    """What the rendered files say about how a YAML is meant to be launched (all optional)."""

    engine: str | None = None
    nnodes: int | None = None
    nproc_per_node: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    accelerate_config: str | None = None  # as written (relative to the folder render ran in)
    launch_script: str | None = None  # render's per-node script, for multi-node YAMLs


@dataclass(frozen=True)
class AccelerateSettings:
    """The numbers an accelerate config file holds (None where it does not say)."""

    num_machines: int | None = None
    num_processes: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a plan depends on, already read from the command line, environment and files."""

    config: str  # the training YAML, as the user named it
    overrides: tuple[str, ...] = ()  # "key=value" strings, passed through to LLaMA-Factory
    uses_deepspeed: bool = False  # the YAML (with overrides) sets `deepspeed`
    accelerate_config: str | None = None  # resolved path of the accelerate config, if any
    accelerate: AccelerateSettings = field(default_factory=AccelerateSettings)
    # command-line flags (None: not given)
    nnodes: int | None = None
    node_rank: int | None = None
    nproc_per_node: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # the environment the command runs in
    hints: Hints = field(default_factory=Hints)
    device_count: int = 0  # visible GPUs (0 on CPU)
    free_port: int | None = None  # a free local port for single-node runs that name none


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str | None
    master_port: int | None

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass(frozen=True)
class Plan:
    engine: str
    argv: tuple[str, ...]
    env: dict[str, str]  # set on top of the current environment for the child
    topology: Topology
    config: str
    overrides: tuple[str, ...] = ()
    accelerate_config: str | None = None
    notes: tuple[str, ...] = ()

    def command(self) -> str:
        """The exact command as one shell line: `K=V ... argv`."""
        assigns = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join(assigns + [shlex.quote(a) for a in self.argv])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        data["overrides"] = list(self.overrides)
        data["notes"] = list(self.notes)
        data["topology"]["world_size"] = self.topology.world_size
        data["command"] = self.command()
        return data


# ---- reading values ---------------------------------------------------------------------------------------

def env_enabled(env: Mapping[str, str], name: str, default: str = "0") -> bool:
    """LLaMA-Factory's `is_env_enabled`: true for 1/true/y."""
    return env.get(name, default).strip().lower() in ("true", "y", "1")


def _int(value: Any, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UserError(f"{what}={value!r}: expected a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"{minimum} or more"
        raise UserError(f"{what}={number}: expected {bound}")
    return number


def _first(*candidates: tuple[Any, str]) -> tuple[Any, str] | tuple[None, None]:
    for value, source in candidates:
        if value is not None and value != "":
            return value, source
    return None, None


def resolve_topology(req: LaunchRequest) -> Topology:
    """Nodes, this node's rank, processes per node and the rendezvous address; UserError on nonsense."""
    env, hints, acc = req.env, req.hints, req.accelerate
    acc_nproc = None
    if acc.num_processes and acc.num_machines:
        acc_nproc = max(1, acc.num_processes // acc.num_machines)

    value, source = _first((req.nnodes, "--nnodes"), (env.get("NNODES"), "NNODES"),
                           (hints.nnodes, "the rendered launch script"), (acc.num_machines, "num_machines"))
    nnodes = _int(value, source, minimum=1) if value is not None else 1

    value, source = _first((req.node_rank, "--node-rank"), (env.get("NODE_RANK"), "NODE_RANK"))
    if value is None and nnodes > 1 and not env.get("RDZV_ID"):  # an elastic rendezvous assigns ranks itself
        raise UserError(f"a {nnodes}-node run needs this node's rank: set NODE_RANK=0..{nnodes - 1} "
                        "(or pass --node-rank) on every node")
    node_rank = _int(value, source, minimum=0, maximum=nnodes - 1) if value is not None else 0

    value, source = _first((req.nproc_per_node, "--nproc-per-node"), (env.get("NPROC_PER_NODE"), "NPROC_PER_NODE"),
                           (hints.nproc_per_node, "the rendered command"), (acc_nproc, "num_processes"))
    if value is not None:
        nproc = _int(value, source, minimum=1)
    else:
        nproc = req.device_count if req.device_count > 0 else 1

    addr, _ = _first((req.master_addr, "--master-addr"), (env.get("MASTER_ADDR"), "MASTER_ADDR"),
                     (hints.master_addr, "hint"), (acc.main_process_ip, "main_process_ip"))
    value, source = _first((req.master_port, "--master-port"), (env.get("MASTER_PORT"), "MASTER_PORT"),
                           (hints.master_port, "the rendered launch script"),
                           (acc.main_process_port, "main_process_port"))
    port = _int(value, source, minimum=1, maximum=65535) if value is not None else None
    if nnodes > 1:
        missing = [name for name, v in (("MASTER_ADDR", addr), ("MASTER_PORT", port)) if v is None]
        if missing:
            raise UserError(
                f"a {nnodes}-node run needs the rendezvous of node 0 on every node: set "
                f"{' and '.join(missing)} (or pass --master-addr/--master-port), the same on all nodes"
            )
    else:
        addr = addr or "127.0.0.1"
        port = port if port is not None else req.free_port
    return Topology(nnodes=nnodes, node_rank=node_rank, nproc_per_node=nproc, master_addr=str(addr),
                    master_port=port)


def choose_engine(req: LaunchRequest, topo: Topology) -> str:
    if req.accelerate_config:
        return "accelerate"
    if (req.uses_deepspeed or topo.world_size > 1 or env_enabled(req.env, "FORCE_TORCHRUN")
            or env_enabled(req.env, "USE_MCA") or req.hints.engine == "torchrun"):
        return "torchrun"
    return "llamafactory"


def plan_launch(req: LaunchRequest, tools: Mapping[str, str] | None = None) -> Plan:
    """The launch plan for a request. `tools` maps llamafactory-cli/torchrun/accelerate to how to call them."""
    tools = dict(tools or {})
    topo = resolve_topology(req)
    engine = choose_engine(req, topo)
    if engine == "accelerate" and req.uses_deepspeed:
        raise UserError(f"{req.config}: sets `deepspeed` but is launched with accelerate config "
                        f"{req.accelerate_config}; use one of them (remove `deepspeed`, or drop the accelerate config)")
    payload = [req.config, *req.overrides]
    env: dict[str, str] = {}
    notes: list[str] = []
    if engine == "llamafactory":
        argv = [tools.get("llamafactory-cli", "llamafactory-cli"), "train", *payload]
        if req.device_count > 1:
            notes.append(f"{req.device_count} GPUs are visible: llamafactory-cli will use all of them; "
                         "set CUDA_VISIBLE_DEVICES to use fewer")
    elif engine == "torchrun":
        if topo.master_port is None:
            raise UserError("no rendezvous port: set MASTER_PORT (or pass --master-port)")
        rdzv_id = req.env.get("RDZV_ID")
        if rdzv_id:  # elastic, fault-tolerant launch, as llamafactory-cli does it when RDZV_ID is set
            nnodes = str(topo.nnodes)
            if req.env.get("MIN_NNODES") and req.env.get("MAX_NNODES"):
                nnodes = f"{req.env['MIN_NNODES']}:{req.env['MAX_NNODES']}"
            argv = [tools.get("torchrun", "torchrun"), "--nnodes", nnodes, "--nproc-per-node", str(topo.nproc_per_node),
                    "--rdzv-id", rdzv_id, "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", f"{topo.master_addr}:{topo.master_port}",
                    "--max-restarts", str(req.env.get("MAX_RESTARTS", "0")), "-m", LAUNCHER_MODULE, *payload]
        else:
            argv = [tools.get("torchrun", "torchrun"), "--nnodes", str(topo.nnodes), "--node_rank",
                    str(topo.node_rank), "--nproc_per_node", str(topo.nproc_per_node), "--master_addr",
                    str(topo.master_addr), "--master_port", str(topo.master_port), "-m", LAUNCHER_MODULE, *payload]
        if env_enabled(req.env, "OPTIM_TORCH", "1"):  # as llamafactory-cli does before torchrun
            for key, value in (("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
                               ("TORCH_NCCL_AVOID_RECORD_STREAMS", "1")):
                if key not in req.env:
                    env[key] = value
    else:
        if topo.master_port is None:
            raise UserError("no rendezvous port: set MASTER_PORT (or pass --master-port)")
        argv = [tools.get("accelerate", "accelerate"), "launch", "--config_file", str(req.accelerate_config),
                "--num_machines", str(topo.nnodes), "--num_processes", str(topo.world_size),
                "--machine_rank", str(topo.node_rank)]
        if topo.nnodes > 1:
            argv += ["--main_process_ip", str(topo.master_addr)]
        argv += ["--main_process_port", str(topo.master_port), "-m", LAUNCHER_MODULE, *payload]
    return Plan(engine=engine, argv=tuple(argv), env=env, topology=topo, config=req.config,
                overrides=tuple(req.overrides), accelerate_config=req.accelerate_config, notes=tuple(notes))


# ---- hints in rendered files ------------------------------------------------------------------------------

_RUN_LINE = re.compile(r"^#\s*Run:\s*(?P<cmd>.+?)\s*$", re.MULTILINE)


def parse_run_hint(yaml_text: str) -> Hints:
    """Read the `# Run: ...` line `minicpm-recipes render` writes at the top of a training YAML."""
    match = _RUN_LINE.search(yaml_text)
    if not match:
        return Hints()
    try:
        words = shlex.split(match.group("cmd"))
    except ValueError:
        return Hints()
    assigns: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        assigns[key] = value
    nproc = _maybe_int(assigns.get("NPROC_PER_NODE"))
    if words[:2] == ["accelerate", "launch"]:
        config = None
        if "--config_file" in words:
            i = words.index("--config_file")
            config = words[i + 1] if i + 1 < len(words) else None
        return Hints(engine="accelerate", accelerate_config=config, nproc_per_node=nproc)
    if words[:1] == ["bash"] and len(words) > 1:
        return Hints(launch_script=words[1])
    if words[:2] == ["llamafactory-cli", "train"]:
        engine = "torchrun" if env_enabled(assigns, "FORCE_TORCHRUN") else "llamafactory"
        return Hints(engine=engine, nproc_per_node=nproc)
    return Hints()


def parse_node_script(script_text: str) -> Hints:
    """Defaults from render's per-node script (templates/launch/node.sh.j2): nodes, processes, rendezvous."""
    def default(name: str) -> str | None:
        match = re.search(rf'^export {name}="\$\{{{name}:-(?P<v>[^}}]*)\}}"', script_text, re.MULTILINE)
        return match.group("v") if match and match.group("v") else None

    nnodes = re.search(r"^export NNODES=(\d+)\s*$", script_text, re.MULTILINE)
    config = re.search(r"--config_file (\S+)", script_text)
    return Hints(
        engine="accelerate" if "accelerate launch" in script_text else "torchrun",
        nnodes=int(nnodes.group(1)) if nnodes else None,
        nproc_per_node=_maybe_int(default("NPROC_PER_NODE")),
        master_addr=default("MASTER_ADDR"),
        master_port=_maybe_int(default("MASTER_PORT")),
        accelerate_config=shlex.split(config.group(1))[0] if config else None,
    )


def merge_hints(base: Hints, more: Hints) -> Hints:
    """`base` with the blanks filled from `more`."""
    values = {k: (v if v is not None else getattr(more, k)) for k, v in asdict(base).items()}
    return Hints(**values)


def _maybe_int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
