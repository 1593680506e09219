"""What a device needs from the model, and the module settings that follow: decided here, in one place.

An adapter declares its device's `DeviceCapabilities` (backends/base.py: `Backend.capabilities`); it never
touches the model's modules. `configure_for` turns the capabilities into `ModuleSettings` and hands them
to every module that takes settings (a `configure(settings)` method: FusedTables, DeepHashEmbedding, MLP).

>>> settings_for(DeviceCapabilities())
ModuleSettings(hash_method='float64', bag_pooling='bag', quantized_lookup='fbgemm', linear_kernel='aten', \
pair_select='index_select', one_id_lookup='embedding', small_quantized_lookup='quantized_lookup', \
interaction_kernel='torch')
>>> tpu = DeviceCapabilities(int64=False, float64=False, embedding_bag=False, quantized_bag=False)
>>> settings_for(tpu).hash_method, settings_for(tpu).bag_pooling, settings_for(tpu).quantized_lookup
('int32', 'gather_sum', 'gather')
>>> settings_for(DeviceCapabilities(launch_bound=True)).hash_method                      # a GPU
'int64'
>>> cpu = settings_for(DeviceCapabilities(onednn_linear=True, cpu_kernels=True))         # a host CPU
>>> cpu.linear_kernel, cpu.pair_select, cpu.one_id_lookup, cpu.small_quantized_lookup, cpu.interaction_kernel
('onednn', 'int16_gather', 'embedding_bag', 'c_kernel', 'c_kernel')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device can do natively. The defaults describe a host CPU, the reference every adapter
    departs from (backends/base.py); they are facts about hardware, not settings a user chooses."""

    int64: bool = True  # fast 64-bit integer arithmetic (TPUs emulate it slowly; IPUs have none)
    float64: bool = True  # 64-bit floating point (neither TPUs nor IPUs have it)
    embedding_bag: bool = True  # F.embedding_bag runs on the device (XLA falls back to the host)
    launch_bound: bool = False  # a kernel launch costs more than cache-sized chunks save (GPUs)
    quantized_bag: bool = True  # torch's FBGEMM quantized embedding-bag kernels (int8, int4 rows) run here
    # torch's oneDNN fused linear (torch.ops.mkldnn._linear_pointwise: GEMM, bias and ReLU in one call) runs
    # here: host CPUs where torch is built with oneDNN; the CPU adapter says so, the default does not.
    onednn_linear: bool = False
    # torch's CPU kernels (ATen's, FBGEMM's) run the model's ops, with their particular speeds: index_select
    # vectorized for fp32 only, embedding_bag's row prefetch. The CPU adapter says so, the default does not.
    cpu_kernels: bool = False


@dataclass(frozen=True)
class ModuleSettings:
    hash_method: str  # DHE: float64 (chunked, C kernel on CPUs), int64 (one pass) or int32 (limbs)
    bag_pooling: str  # tables' multi-id bags: bag (F.embedding_bag) or gather_sum
    quantized_lookup: str  # int8/int4 tables: fbgemm (one fused quantized kernel) or gather, then dequantize
    linear_kernel: str = "aten"  # MLPs in inference: onednn (linear, bias, ReLU in one call) or aten
    # The interaction's pairs in 16-bit dtypes, large queries, no autograd: int16_gather (moved as int16
    # by torch.gather, which CPUs vectorize where their 16-bit index_select is not) or index_select
    pair_select: str = "index_select"
    # Tables' one-id bags in large inference queries: embedding_bag (FBGEMM's CPU kernel prefetches rows:
    # 3x F.embedding's index_select) or embedding
    one_id_lookup: str = "embedding"
    # int8 and int4 tables' small queries (table/kernels.py, SMALL_MAX_LOOKUPS): c_kernel (one C gather and
    # dequantize, FBGEMM's sums bit for bit without its ~5 us call) or quantized_lookup (as large ones)
    small_quantized_lookup: str = "quantized_lookup"
    # The bf16 dot interaction without autograd: c_kernel (one C pass, AVX-512 CPUs: harness/workload/
    # interaction.py; elsewhere torch's) or torch (cast, batched GEMM, pair gather)
    interaction_kernel: str = "torch"


def settings_for(caps: DeviceCapabilities) -> ModuleSettings:
    """The settings a device with `caps` runs the model with; every choice computes the same function."""
    if not caps.int64:
        hash_method = "int32"  # exact by limbs (dhe/hashing.py)
    elif caps.launch_bound or not caps.float64:
        hash_method = "int64"  # one pass of the definition: a few kernels, whatever the query size
    else:
        hash_method = "float64"  # cache-sized chunks of exact float64, or one C pass
    return ModuleSettings(hash_method=hash_method, bag_pooling="bag" if caps.embedding_bag else "gather_sum",
                          quantized_lookup="fbgemm" if caps.quantized_bag else "gather",
                          linear_kernel="onednn" if caps.onednn_linear else "aten",
                          pair_select="int16_gather" if caps.cpu_kernels else "index_select",
                          one_id_lookup="embedding_bag" if caps.cpu_kernels and caps.embedding_bag
                          else "embedding",
                          # FBGEMM's sums, bit for bit: only where FBGEMM takes the large queries
                          small_quantized_lookup="c_kernel" if caps.cpu_kernels and caps.quantized_bag
                          else "quantized_lookup",
                          interaction_kernel="c_kernel" if caps.cpu_kernels else "torch")


def recorded(model, settings: ModuleSettings) -> dict[str, str]:
    """What a run records of how its model computes: the settings, and the kernel each module that has a
    choice of its own takes where it runs (`kernel_choices()`: the DHE hash's C variant, which depends on
    the CPU's vector extensions and changes the hash's speed 1.5x)."""
    out = {name: str(value) for name, value in asdict(settings).items()}
    for module in model.modules():
        choices = getattr(module, "kernel_choices", None)
        if callable(choices):
            out.update(choices())
    return out


def configure_for(model, caps: DeviceCapabilities) -> ModuleSettings:
    """Give every module of `model` that takes settings the ones `caps` call for; returns them."""
    settings = settings_for(caps)
    for module in model.modules():
        configure = getattr(module, "configure", None)
        if callable(configure):
            configure(settings)
    return settings
