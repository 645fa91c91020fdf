"""Run megatron-core's training machinery on a CPU-only torch build.

megatron-core 0.16 assumes CUDA in a handful of places that the CPU path (gloo, tests, laptops, CI)
reaches. `install()` redirects exactly these, and only when `torch.cuda.is_available()` is false; with
CUDA present it installs nothing and returns False. Every redirect keeps the numerics: the same
tensors are created, just on the CPU device, and no-op'd calls (`synchronize`, streams) only order work
that is already ordered on a CPU.

What is adapted, and why:

1. `torch.cuda.current_device()` returns the CPU device. Tensor-parallel mappings, layers, p2p
   communication, DDP's buffers and `GPTModel` allocate with `device=torch.cuda.current_device()`.
2. `torch.cuda.synchronize()` and `torch.cuda.empty_cache()` become no-ops: called by p2p communication,
   parallel_state, DDP's `free_overlap_buffers`, and dist-ckpt's `filesystem_async.preload_tensors`.
3. `torch.cuda.Stream`, `torch.cuda.stream(...)`, `torch.cuda.current_stream()` and
   `torch.cuda.default_stream()` become a dummy stream and a null context: DDP creates a communication
   stream and `param_and_grad_buffer` waits on it.
4. `torch.Tensor.cuda()` returns the tensor itself: the optimizer's state-dict reload and the language
   module call `.cuda()` on freshly built tensors.
5. `device="cuda"` literals: the pipeline schedules (`total_num_tokens`), the optimizer
   (`found_inf`, `_scale_one`, `_dummy_overflow_buf`, grad scaler), `clip_grads`, DDP's
   `param_and_grad_buffer` and `megatron.core.utils` build small tensors on "cuda". In those modules the
   name `torch` is replaced by a thin proxy whose tensor factories map a CUDA device to the CPU and that
   forwards everything else to torch unchanged.
6. The model-parallel RNG tracker: megatron keeps named CUDA generator states (data-parallel,
   tensor-parallel seed offset by TP rank, expert). `CpuRNGStatesTracker` keeps the same named states
   for the CPU generator, and `fork(name)` swaps the CPU generator state in and out exactly as the CUDA
   tracker does, so dropout under TP draws from the per-rank stream megatron intends.
   The same proxy maps `torch.autocast("cuda", ...)` in the schedules to `torch.autocast("cpu", ...)`, so
   bf16 autocast (TransformerConfig.enable_autocast) works on the CPU.
7. `p2p_communication` (pipeline send/recv) uses items 1 and 2; with gloo it sends CPU tensors.
8. `clip_grad_by_total_norm_fp32` asserts every gradient is a `torch.cuda.FloatTensor`. It is replaced,
   in `optimizer.clip_grads` and in `optimizer.optimizer` (which imported it by name), by a version that
   asserts float32 on any device and scales the gradients in place by the same coefficient,
   `max_norm / (total_norm + 1e-6)` when below 1.
10. bf16 training: `Float16OptimizerWithFloat16Params.__init__` sorts parameters by their CUDA type
   names ('torch.cuda.BFloat16Tensor', ...) and refuses anything else. While that constructor runs,
   `Tensor.type()` (no arguments) reports a CPU tensor's type under its CUDA name, so CPU bf16
   parameters get their fp32 main copies exactly as on a GPU; nothing else sees the renamed types.
9. Activation recompute (`tensor_parallel.checkpoint`) saves and restores the CUDA generator state with
   `random._get_cuda_rng_state` / `_set_cuda_rng_state`, besides the CPU state and the tracker states it
   handles itself. With no CUDA generator, the getter returns the CPU state (a placeholder the setter
   ignores) and the setter does nothing: the CPU state is already restored by the checkpoint function.

Items 1-10 are what megatron needs to run at all on a CPU. The speed-ups listed in `ACCELERATIONS` are
different: they compute what megatron's own path computes (each has a test against that path), and they
are on only where this adapter is installed (never with CUDA). Each was kept because it saves at least 3 %
of a CPU training step (benchmarks/README.md has the measurements and the ones removed for saving less). One switch turns them
all off: `trainer.cpu_accelerations=false` (`configure_accelerations(False)`) or the environment variable
`COSMOS_NEMO_CPU_ACCELERATIONS=0`; the variable may also name the ones to keep (`fused_loss,fused_adamw`)
or drop (`-fused_loss`), which is how `benchmarks/train_throughput.py` measures each one. The variable
wins over the config field, so a whole launch can be switched without editing a recipe.

Supported megatron-core versions: 0.16.1 (Python 3.11) and 0.19.x (Python 3.12); the CI runs the
adapter's tests and the equivalence tests on both. Every megatron-core name the adapter redirects or
relies on is listed once, in `TARGETS`. A target that moved, vanished or changed its signature in another
megatron-core release fails loudly, never silently (assigning a replacement to a name nobody reads any
more would silently keep megatron's CUDA-only code):
- at import of this module, from megatron's source files (parsed, not imported, so importing stays cheap):
  an `AdapterTargetError` listing each target that is missing, where CUDA is absent (the adapter will be
  needed); a warning with the same list where CUDA is present (the adapter is never installed there);
- in `install()`, again on the imported modules, before anything is patched.
`check_targets()` returns the problems (an empty list when all is in place).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import os
import types
import warnings
from dataclasses import dataclass
from typing import Optional

import torch


_INSTALLED = False

# The CPU speed-ups, by name: each one is on only while this adapter is installed and the switch allows it.
ACCELERATIONS = {
    "fused_loss": "output projection + cross-entropy in one function, its weight gradient written straight "
                  "into DDP's buffer (models/common/linear_ce.py)",
    "embedding_main_grad": "the embedding's weight gradient written straight into DDP's buffer "
                           "(parallel/main_grad.py)",
    "fused_adamw": "torch's fused AdamW instead of megatron's per-parameter fallback, clipping folded into "
                   "its grad_scale (training/harness.py)",
}
ENV_VAR = "COSMOS_NEMO_CPU_ACCELERATIONS"
_CONFIGURED = True


def configure_accelerations(enabled: bool = True) -> None:
    """The config side of the switch (`trainer.cpu_accelerations`); the environment variable wins."""
    global _CONFIGURED
    _CONFIGURED = bool(enabled)


def enabled_accelerations() -> frozenset[str]:
    """The accelerations in force: none without the adapter, else what the switch allows."""
    import os

    if not _INSTALLED:
        return frozenset()
    text = os.environ.get(ENV_VAR, "").strip().lower()
    if text in ("", "1", "on", "all", "true"):
        return frozenset(ACCELERATIONS) if (_CONFIGURED or text) else frozenset()
    if text in ("0", "off", "none", "false"):
        return frozenset()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted({n.lstrip("-") for n in names} - set(ACCELERATIONS))
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown acceleration(s) {unknown}; known: {sorted(ACCELERATIONS)}, "
                         "or 0/1 for none/all")
    if all(n.startswith("-") for n in names):
        return frozenset(ACCELERATIONS) - {n[1:] for n in names}
    if any(n.startswith("-") for n in names):
        raise ValueError(f"{ENV_VAR}: either name the accelerations to keep or the ones to drop (-name), not both")
    return frozenset(names)


def accelerate_model(model: torch.nn.Module) -> torch.nn.Module:
    """Apply the module-level CPU speed-ups to a freshly built model, before DDP wraps it (the training
    harness calls this; inference never does): with `embedding_main_grad`, megatron's vocab-parallel
    embeddings get the lookup of `parallel/main_grad.py`, a subclass with no new state (same parameters,
    same state dict), so the class is swapped in place. Returns the model."""
    if acceleration("embedding_main_grad"):
        from megatron.core.tensor_parallel.layers import VocabParallelEmbedding

        from cosmos_nemo.parallel.main_grad import MainGradVocabEmbedding

        for module in model.modules():
            if type(module) is VocabParallelEmbedding:
                module.__class__ = MainGradVocabEmbedding
    return model


def acceleration(name: str) -> bool:
    """Whether the CPU speed-up `name` (a key of ACCELERATIONS) is on in this process."""
    if name not in ACCELERATIONS:
        raise KeyError(f"unknown CPU acceleration {name!r}; known: {sorted(ACCELERATIONS)}")
    return name in enabled_accelerations()

# megatron modules that build tensors with a literal device="cuda" (item 5 of the docstring).
_CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.utils",
)


# --------------------------------------------------------------------------------------------------
# the megatron-core names the adapter redirects or relies on, checked before use


class AdapterTargetError(ImportError):
    """A megatron-core name that the CPU adapter redirects has moved or changed in the installed release."""


@dataclass(frozen=True)
class Target:
    module: str  # a megatron.core module
    name: str  # a top-level name in it; "torch" means the module must `import torch` (item 5's proxy)
    why: str  # which item of the module docstring uses it
    params: Optional[tuple[str, ...]] = None  # a function's parameter names, when our replacement mirrors it


_CLIP_PARAMS = ("parameters", "max_norm", "total_norm", "use_decoupled_grad")

TARGETS: tuple[Target, ...] = (
    *(Target(m, "torch", "5: device='cuda' literals, via the torch proxy") for m in _CUDA_LITERAL_MODULES),
    Target("megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32", "8: clipping without the CUDA "
           "type assertion", _CLIP_PARAMS),
    Target("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32", "8: imported there by name",
           _CLIP_PARAMS),
    Target("megatron.core.optimizer.optimizer", "Float16OptimizerWithFloat16Params", "10: bf16 main params"),
    Target("megatron.core.tensor_parallel.random", "_get_cuda_rng_state", "9: recompute RNG state"),
    Target("megatron.core.tensor_parallel.random", "_set_cuda_rng_state", "9: recompute RNG state"),
    Target("megatron.core.tensor_parallel.random", "CudaRNGStatesTracker", "6: the tracker class replaced"),
    Target("megatron.core.tensor_parallel.random", "initialize_rng_tracker", "6: builds the tracker by that name"),
    Target("megatron.core.tensor_parallel.random", "_MODEL_PARALLEL_RNG_TRACKER_NAME", "6: fork()'s default name"),
    Target("megatron.core.tensor_parallel.layers", "VocabParallelEmbedding", "acceleration embedding_main_grad"),
)


def _megatron_root() -> Optional[str]:
    """The folder of the installed `megatron` package, found without importing it (None: not installed)."""
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _top_level(tree: ast.Module) -> tuple[dict[str, ast.AST], set[str]]:
    """Names bound at a module's top level (functions, classes, assignments, imports), and imported modules."""
    names: dict[str, ast.AST] = {}
    modules: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            names[leaf.id] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names[node.target.id] = node
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    names[alias.asname or alias.name.split(".")[0]] = node
                    modules.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    names[alias.asname or alias.name] = node
            elif isinstance(node, (ast.If, ast.Try)):  # `try: import x` / `if HAVE_TE:` blocks
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(tree.body)
    return names, modules


def _static_problems(targets=TARGETS, root: Optional[str] = None) -> list[str]:
    """Check `targets` against megatron's source files without importing megatron."""
    root = root or _megatron_root()
    if root is None:
        return []  # megatron-core is not installed: install() fails with the ImportError itself
    problems, parsed = [], {}
    for t in targets:
        rel = t.module.split(".")[1:]  # below "megatron"
        path = os.path.join(root, *rel) + ".py"
        if not os.path.isfile(path):
            path = os.path.join(root, *rel, "__init__.py")
        if t.module not in parsed:
            try:
                with open(path, encoding="utf-8") as f:
                    parsed[t.module] = _top_level(ast.parse(f.read(), filename=path))
            except (OSError, SyntaxError) as err:
                parsed[t.module] = None
                problems.append(f"{t.module}: module not found or unreadable ({type(err).__name__}: {err}) [{t.why}]")
        if parsed[t.module] is None:
            continue
        names, modules = parsed[t.module]
        if t.name == "torch":
            if "torch" not in modules:
                problems.append(f"{t.module} no longer does `import torch` [{t.why}]")
            continue
        node = names.get(t.name)
        if node is None:
            problems.append(f"{t.module}.{t.name} is gone [{t.why}]")
        elif t.params is not None and isinstance(node, ast.FunctionDef):
            params = tuple(a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs)
            if params != t.params:
                problems.append(f"{t.module}.{t.name} takes {params}, the adapter's replacement {t.params} [{t.why}]")
    return problems


def _loaded_problems(targets=TARGETS) -> list[str]:
    """Check `targets` on the imported modules (what install() is about to patch)."""
    problems = []
    for t in targets:
        try:
            module = importlib.import_module(t.module)
        except ImportError as err:
            problems.append(f"{t.module}: cannot be imported ({err}) [{t.why}]")
            continue
        if t.name == "torch":
            if getattr(module, "torch", None) is not torch and not isinstance(getattr(module, "torch", None), _TorchOnCpu):
                problems.append(f"{t.module}.torch is not the torch module [{t.why}]")
            continue
        if not hasattr(module, t.name):
            problems.append(f"{t.module}.{t.name} is gone [{t.why}]")
            continue
        if t.params is not None:
            value = getattr(module, t.name)
            if value is _clip_grad_by_total_norm_fp32:
                continue  # already replaced by ours
            try:
                params = tuple(inspect.signature(value).parameters)
            except (TypeError, ValueError):
                params = None
            if params != t.params:
                problems.append(f"{t.module}.{t.name} takes {params}, the adapter's replacement {t.params} [{t.why}]")
    return problems


def _megatron_version() -> str:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:
        return "unknown"


def _report(problems: list[str]) -> str:
    return (f"cosmos_nemo.parallel.cpu_adapter: megatron-core {_megatron_version()} moved or changed names that the "
            "CPU adapter redirects (supported: 0.16.1 and 0.19.x; see requirements.txt):\n  - "
            + "\n  - ".join(problems)
            + "\nUpdate TARGETS and the redirects in cosmos_nemo/parallel/cpu_adapter.py for this release, or install "
            "a supported megatron-core.")


def check_targets(targets=TARGETS) -> list[str]:
    """Every problem with the adapter's targets in the installed megatron-core (empty: all in place)."""
    return _static_problems(targets)

_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "zeros_like", "ones_like", "empty_like")


def _cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    dev = torch.device(device) if isinstance(device, str) else device
    return torch.device("cpu") if isinstance(dev, torch.device) and dev.type == "cuda" else device


def _make_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    factory.__doc__ = fn.__doc__
    return factory


class _TorchOnCpu(types.ModuleType):
    """`torch`, except that its tensor factories put `device="cuda"` tensors on the CPU."""

    def __init__(self):
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _make_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def autocast(device_type="cuda", *args, **kwargs):
        return torch.autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


class _DummyStream:
    """Stands in for `torch.cuda.Stream` on the CPU, where work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return None


def _cpu_rng_tracker_class():
    from megatron.core.tensor_parallel import random as mp_random

    class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
        """Named RNG states for the CPU generator, with megatron's tracker interface (add/fork/...)."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
            self.states_[name] = generator.get_state()

        @contextlib.contextmanager
        def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            outer = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            previous_name, self._current_state_name = self._current_state_name, name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(outer)
                self._current_state_name = previous_name

    return CpuRNGStatesTracker


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's gradient clipping, minus its CUDA type assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    for g in grads:
        if g.dtype != torch.float32 and not use_decoupled_grad:
            raise TypeError(f"gradient clipping expects float32 gradients, got {g.dtype}")
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        torch._foreach_mul_(grads, clip_coeff)


def _with_cuda_type_names(init):
    def wrapped(self, *args, **kwargs):
        original = torch.Tensor.type

        def type_(tensor, *a, **k):
            name = original(tensor, *a, **k)
            if a or k or not isinstance(name, str) or name.startswith("torch.cuda."):
                return name
            return name.replace("torch.", "torch.cuda.", 1)

        torch.Tensor.type = type_
        try:
            return init(self, *args, **kwargs)
        finally:
            torch.Tensor.type = original

    return wrapped


def install(force: bool = False) -> bool:
    """Install the CPU redirects once. Returns True if installed, False when CUDA is present.

    `force` is for tests only: it installs even if CUDA is present (never use it on a GPU machine).
    """
    global _INSTALLED
    if torch.cuda.is_available() and not force:
        return False
    if _INSTALLED:
        return True
    problems = _loaded_problems()
    if problems:  # before anything is patched
        raise AdapterTargetError(_report(problems))

    cpu = torch.device("cpu")
    torch.cuda.current_device = lambda: cpu
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.Stream = _DummyStream
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    torch.cuda.current_stream = lambda *args, **kwargs: _DummyStream()
    torch.cuda.default_stream = lambda *args, **kwargs: _DummyStream()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self

    proxy = _TorchOnCpu()
    for name in _CUDA_LITERAL_MODULES:
        module = importlib.import_module(name)
        module.torch = proxy

    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    fp16_opt = optimizer.Float16OptimizerWithFloat16Params
    fp16_opt.__init__ = _with_cuda_type_names(fp16_opt.__init__)

    from megatron.core.tensor_parallel import random as mp_random

    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda *args, **kwargs: None
    # initialize_rng_tracker() instantiates `CudaRNGStatesTracker` by its module-level name.
    mp_random.CudaRNGStatesTracker = _cpu_rng_tracker_class()
    mp_random.initialize_rng_tracker(force_reset=True)

    _INSTALLED = True
    return True


def is_installed() -> bool:
    return _INSTALLED


def _check_at_import() -> None:
    problems = _static_problems()
    if not problems:
        return
    if torch.cuda.is_available():  # the adapter is never installed here; say it, but let GPU runs go on
        warnings.warn(_report(problems) + "\n(CUDA is present, so the adapter is not used in this process.)",
                      RuntimeWarning, stacklevel=3)
        return
    raise AdapterTargetError(_report(problems))


_check_at_import()
