"""Published figures: params (M), MACs at 224 (G), ImageNet-1K top-1 (%), from the official READMEs/papers
(sail-sg/poolformer, sail-sg/metaformer), as collected in shared/specs/metaformer.md section 4.

``frozen`` is RandFormer's frozen random-matrix size (published as "+0.2 M" etc.).
PoolFormer v1, ConvFormer and CAFormer params are published rounded to whole millions.
"""

PUBLISHED = {
    "poolformer_s12": dict(params=12, macs=1.8, top1=77.2),
    "poolformer_s24": dict(params=21, macs=3.4, top1=80.3),
    "poolformer_s36": dict(params=31, macs=5.0, top1=81.4),
    "poolformer_m36": dict(params=56, macs=8.8, top1=82.1),
    "poolformer_m48": dict(params=73, macs=11.6, top1=82.5),
    "poolformerv2_s12": dict(params=11.9, macs=1.8, top1=78.0),
    "poolformerv2_s24": dict(params=21.3, macs=3.4, top1=80.7),
    "poolformerv2_s36": dict(params=30.8, macs=5.0, top1=81.6),
    "poolformerv2_m36": dict(params=56.1, macs=8.8, top1=82.2),
    "poolformerv2_m48": dict(params=73.3, macs=11.5, top1=82.6),
    "identityformer_s12": dict(params=11.9, macs=1.8, top1=74.6),
    "identityformer_s24": dict(params=21.3, macs=3.4, top1=78.2),
    "identityformer_s36": dict(params=30.8, macs=5.0, top1=79.3),
    "identityformer_m36": dict(params=56.1, macs=8.8, top1=80.0),
    "identityformer_m48": dict(params=73.3, macs=11.5, top1=80.4),
    "randformer_s12": dict(params=11.9, frozen=0.2, macs=1.9, top1=76.6),
    "randformer_s24": dict(params=21.3, frozen=0.5, macs=3.5, top1=78.2),
    "randformer_s36": dict(params=30.8, frozen=0.7, macs=5.2, top1=79.5),
    "randformer_m36": dict(params=56.1, frozen=0.7, macs=9.0, top1=81.2),
    "randformer_m48": dict(params=73.3, frozen=0.9, macs=11.9, top1=81.4),
    "convformer_s18": dict(params=27, macs=3.9, top1=83.0),
    "convformer_s36": dict(params=40, macs=7.6, top1=84.1),
    "convformer_m36": dict(params=57, macs=12.8, top1=84.5),
    "convformer_b36": dict(params=100, macs=22.6, top1=84.8),
    "caformer_s18": dict(params=26, macs=4.1, top1=83.6),
    "caformer_s36": dict(params=39, macs=8.0, top1=84.5),
    "caformer_m36": dict(params=56, macs=13.2, top1=85.2),
    "caformer_b36": dict(params=99, macs=23.2, top1=85.5),
}

# timm registers these architectures itself; the zoo's builder-made versions must match them exactly.
TIMM_OWNED = [n for n in PUBLISHED if n.split("_")[0] in ("poolformer", "poolformerv2", "convformer", "caformer")]
