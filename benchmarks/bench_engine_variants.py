"""Encoder graph variants tried for the OpenVINO engine's speed and not taken (docs/engines.md,
"Layout"): each is a forward of the same weights written another way, exported with the package's
route and timed against the package's graph in interleaved rounds (paired ratio variant / package).

Variants (``--variant``, repeatable):
  stage0-strips  the first stage (MBConv blocks at 256x256, 64 -> 256 channels, and the merge into
                 stage 1) computed in horizontal strips with a one-row halo, so that the 256-channel
                 intermediates of a strip stay in cache (``--strips`` strips).
  qkv-split      the qkv projection's rows reordered (q, k, v of all heads), one projection, then
                 split into q, k, v.
  qkv-one        one projection and a 5D permute per block (the graph of ENGINE_FORMAT 2).
The package itself projects q, k and v separately (format 3); the result files named
``engine_variants_zen4*`` were taken before, when the package was format 2 and that was the
variant "qkv-three".
Each reports the eager max |diff| to the package's forward (0 = the same numbers) and the engine's
max |diff| to eager.

Run: .venv/bin/python benchmarks/bench_engine_variants.py --variant stage0-strips --variant qkv-one
     [--rounds 12] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, interleaved_times, paired_ratio  # noqa: E402


def _mbconv_strips(block, x, n):
    import torch
    import torch.nn.functional as F

    h_all, step, outs = x.shape[2], x.shape[2] // n, []
    c2 = block.conv2
    for r0 in range(0, h_all, step):
        r1 = min(r0 + step, h_all)
        a, b = max(r0 - 1, 0), min(r1 + 1, h_all)
        h = F.gelu(block.conv1(x[:, :, a:b]))
        h = F.pad(h, (0, 0, int(r0 == 0), int(r1 == h_all)))
        h = F.gelu(c2.bn(F.conv2d(h, c2.c.weight, None, 1, (0, 1), 1, c2.c.groups)))
        outs.append(F.gelu(block.conv3(h) + x[:, :, r0:r1]))
    return torch.cat(outs, 2)


def _merge_strips(merge, x, n):
    import torch
    import torch.nn.functional as F

    h_all, c2 = x.shape[2], merge.conv2
    s = c2.c.stride[0]
    h_out = (h_all - 1) // s + 1
    step, outs = h_out // n, []
    for o0 in range(0, h_out, step):
        o1 = min(o0 + step, h_out)
        a, b = max(s * o0 - 1, 0), min(s * (o1 - 1) + 2, h_all)
        h = F.gelu(merge.conv1(x[:, :, a:b]))
        top = int(o0 == 0)
        bottom = max(s * (o1 - o0 - 1) + 3 - (h.shape[2] + top), 0)
        h = F.pad(h, (0, 0, top, bottom))
        h = F.gelu(c2.bn(F.conv2d(h, c2.c.weight, None, s, (0, 1), 1, c2.c.groups)))
        outs.append(merge.conv3(h))
    return torch.cat(outs, 2)


def _attention(mode):
    import torch.nn.functional as F

    def forward(self, x):
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        w = self.qkv.weight.view(h, 3, d, c).transpose(0, 1).reshape(3 * c, c)
        bias = self.qkv.bias.view(h, 3, d).transpose(0, 1).reshape(3 * c)
        xn = self.norm(x)
        if mode == "one":
            q, k, v = self.qkv(xn).view(b, n, h, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
        else:
            q, k, v = (t.view(b, n, h, d).transpose(1, 2) for t in F.linear(xn, w, bias).split(c, dim=-1))
        mask = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    return forward


def patches(variant: str, strips: int):
    from medsam_core.modeling import tiny_vit as tv

    if variant == "stage0-strips":
        def stage(self, x):
            for block in self.blocks:
                x = _mbconv_strips(block, x, strips)
            return _merge_strips(self.downsample, x, strips)
        return [(tv.ConvStage, "forward", stage)]
    if variant in ("qkv-split", "qkv-one"):
        return [(tv.Attention, "forward", _attention(variant.split("-")[1]))]
    raise SystemExit(f"unknown variant {variant}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--strips", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medsam-bench-variants"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    import medsam_core
    from medsam_core import _openvino_engine as ove

    torch.set_num_threads(2)
    enc = medsam_core.load_model("lite_medsam", device="cpu").image_encoder.eval()
    x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    with torch.inference_mode():
        ref = enc(torch.from_numpy(x)).numpy()
    report: dict = {"cpu": cpu_model(), "load_avg": os.getloadavg(), "variants": {}}
    folders = {"package": args.workdir / "package"}
    for name in ["package", *args.variant]:
        saved = []
        if name != "package":
            for owner, attr, fn in patches(name, args.strips):
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, fn)
        try:
            folder = folders[name] = args.workdir / (name if name != "stage0-strips" else f"{name}-{args.strips}")
            folder.mkdir(parents=True, exist_ok=True)
            if name != "package":
                with torch.inference_mode():
                    report["variants"][name] = {"eager_max_abs_vs_package": float(np.abs(
                        enc(torch.from_numpy(x)).numpy() - ref).max())}
            if not (folder / "encoder.xml").exists():
                ove.export_ir(enc, 256, folder / "encoder.xml")
        finally:
            for owner, attr, fn in saved:
                setattr(owner, attr, fn)
    engines = {n: ove.compile_engine(f, 2, "f32") for n, f in folders.items()}
    for n in engines:
        report["variants"].setdefault(n, {})["engine_max_abs_vs_eager"] = float(np.abs(engines[n](x) - ref).max())
    times = interleaved_times(engines, x, args.rounds, warm=2)
    print(f"CPU {report['cpu']}; load {report['load_avg']}\n")
    print("| graph | eager max abs vs package | engine max abs vs eager | median s | paired x package |\n"
          "|---|---|---|---|---|")
    for n, ts in times.items():
        paired = paired_ratio(ts, times["package"])
        row = report["variants"].setdefault(n, {})
        row.update(median_s=statistics.median(ts), paired_x_package=paired)
        print(f"| {n} | {row.get('eager_max_abs_vs_package', 0):.1e} | {row.get('engine_max_abs_vs_eager', 0):.1e} "
              f"| {statistics.median(ts):.3f} | {paired:.3f} |")
    report["load_avg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
