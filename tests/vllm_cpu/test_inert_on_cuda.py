"""openft's vLLM plugins change nothing where vLLM runs on CUDA.

The same package is installed on GPU nodes (its entry points load in every vLLM process), so
on CUDA the LoRA ops and wrapper must stay vLLM's and ``dtype: auto`` must stay vLLM's
choice. Without a GPU here, a process is put on CUDA the way vLLM documents for out-of-tree
hardware: a platform plugin (``vllm.platform_plugins`` entry point) whose platform says CUDA;
it wins over the CPU one. The same probe on this machine's own CPU platform shows the plugins
do load and act there, so the CUDA case is not passing because nothing ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FAKE_CUDA = '''
from vllm.platforms.interface import Platform, PlatformEnum


class FakeCudaPlatform(Platform):
    _enum = PlatformEnum.CUDA
    device_name = "cuda"
    device_type = "cuda"

    @classmethod
    def get_punica_wrapper(cls):  # as vLLM's CudaPlatform answers
        return "vllm.lora.punica_wrapper.punica_gpu.PunicaWrapperGPU"


def plugin():
    return "openft_fake_cuda.FakeCudaPlatform"
'''

PROBE = '''
import json
from vllm.platforms import current_platform
from vllm.plugins import load_general_plugins

load_general_plugins()  # what every vLLM process does: runs openft_cpu_lora and openft_cpu_amx
from vllm_cpu import vllm_private
from vllm_cpu.dtype import this_machine_engine_dtype

print(json.dumps({
    "cuda": current_platform.is_cuda(),
    "ops": sorted({op.__module__ for op in vllm_private.punica_cpu_ops().values()}),
    "wrapper": vllm_private.punica_wrapper_name(),
    "dtype": this_machine_engine_dtype("auto"),
}))
'''


def _fake_cuda_site(folder: Path) -> Path:
    """A folder that, on ``PYTHONPATH``, installs the CUDA platform plugin."""
    (folder / "openft_fake_cuda.py").write_text(FAKE_CUDA)
    dist = folder / "openft_fake_cuda-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openft-fake-cuda\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[vllm.platform_plugins]\nfake_cuda = openft_fake_cuda:plugin\n")
    return folder


def _probe(extra_path: Path | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "VLLM_TARGET_DEVICE")}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path),
                                                          env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-c", PROBE], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(process: subprocess.Popen[str]) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_the_plugins_leave_vllm_alone_on_cuda(tmp_path: Path) -> None:
    on_cuda, on_cpu = _probe(_fake_cuda_site(tmp_path)), _probe(None)
    cuda, cpu = _result(on_cuda), _result(on_cpu)

    assert cuda["cuda"] is True
    assert all(module.startswith("vllm.") for module in cuda["ops"]), cuda["ops"]
    assert cuda["wrapper"] == "vllm.lora.punica_wrapper.punica_gpu.PunicaWrapperGPU"
    assert cuda["dtype"] == "auto"  # whatever this host CPU lacks, the GPU decides

    assert cpu["cuda"] is False
    assert cpu["ops"] == ["vllm_cpu.lora"]
    assert cpu["wrapper"].startswith("vllm_cpu.lora.")
