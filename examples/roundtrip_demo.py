"""`make demo` (for now): tiny Llama 3.2 and Gemma 3 checkpoints built locally with transformers,
loaded with minibridge, compared with transformers' logits, exported back and compared byte for byte.
"""

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hf_checkpoints import load_hf, make_checkpoint, real_config, shrink  # noqa: E402
from minibridge import AutoBridge  # noqa: E402
from minibridge.bridge.hf_folder import HFFolder  # noqa: E402
from minibridge.bridge.safetensors_io import read_tensor  # noqa: E402


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = HFFolder(a).tensors, HFFolder(b).tensors
    return sorted(ta) == sorted(tb) and all(
        torch.equal(read_tensor(ta[n]).view(torch.uint8), read_tensor(tb[n]).view(torch.uint8)) for n in ta
    )


def main():
    work = Path(tempfile.mkdtemp(prefix="minibridge-demo-"))
    for name in ("Llama-3.2-1B", "gemma-3-1b-it"):
        src = make_checkpoint(work / name, shrink(real_config(name)), dtype=torch.bfloat16)
        bridge = AutoBridge.from_hf_pretrained(src)
        model = bridge.to_model(dtype=torch.float32, progress=False)
        hf = load_hf(src, torch.float32)
        ids = torch.randint(0, bridge.config.vocab_size, (2, 32))  # 32 > the tiny Gemma window of 8
        with torch.no_grad():
            diff = (model(ids) - hf(ids).logits).abs().max().item()
        out = bridge.save_hf_pretrained(model, work / f"{name}-export", progress=False)
        exact = same_tensors(src, out)
        print(f"{name:>14} (tiny, {sum(p.numel() for p in model.parameters()):,} params): "
              f"max |logit diff| vs transformers = {diff:.2e}; round trip exact: {exact}; export in {out}")
        if diff > 1e-4 or not exact:
            sys.exit(1)


if __name__ == "__main__":
    main()
