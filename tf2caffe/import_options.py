"""The import stage's options: one definition for `tf2caffe import` (TensorFlow side), for
`python3 -m tf2caffe.import_stage` (run in the Caffe chroot, Python 3.9) and for the command line
that the one passes to the other. Imports nothing heavier than numpy: `tf2caffe import --help` stays instant.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import List, Optional

from .caffe.deploy import DeployOptions
from .caffe.profiles import DEFAULT_PROFILE, PROFILES
from .measure import DEFAULT_TOLERANCE


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `tf2caffe import`, shared with `python3 -m tf2caffe.import_stage`."""
    p.add_argument("files", nargs="+", metavar="FILE.h5", help="intermediate file(s) from `tf2caffe export`")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder: DIR/<stem>.prototxt and DIR/<stem>.caffemodel")
    p.add_argument("--prototxt", metavar="P",
                   help="use this hand-written prototxt (its input shape is set from the HDF5 file) "
                        "instead of the generated one")
    add_target_arguments(p)
    add_deploy_arguments(p)
    p.add_argument("--report", metavar="R.json", help="also write the verification report as JSON")
    p.add_argument("--per-layer", action="store_true",
                   help="report the error of every mapped layer (needs `export --per-layer`)")
    add_backend_arguments(p)


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("native", "pycaffe"),
                   help="who writes the files: pycaffe (Caffe itself, in its environment) or native "
                        "(without Caffe). Default: pycaffe in the first Caffe here that has every layer "
                        "type of the net (TF2CAFFE_CAFFE=bullseye|source|none says which to prefer), else "
                        "native. Either way the net is verified in every runtime here that can run it: "
                        "both Caffes and OpenCV")
    p.add_argument("--no-verify", action="store_true",
                   help="write the files without running the reference input through them")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    # Not argparse `choices`: its refusal prints the whole usage; get_profile's is one line
    # (tf2caffe's main and the API check the name before any work).
    p.add_argument("--profile", default=DEFAULT_PROFILE, metavar="{%s}" % ",".join(PROFILES),
                   help="target profile, the Caffe layer types the net may use: %s (default: %s)" % (
                       "; ".join("%s = %s" % (name, profile.description) for name, profile in PROFILES.items()),
                       DEFAULT_PROFILE))
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T",
                   help="maximum relative error of the compared layers (default: %g)" % DEFAULT_TOLERANCE)


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    """The deployment options (tf2caffe/caffe/deploy.py), for a generated prototxt."""
    p.add_argument("--bgr", action="store_true",
                   help="the net takes BGR where the source takes RGB (the first layer's input channels reversed)")
    p.add_argument("--mean", type=channel_values, metavar="M[,M,M]",
                   help="the net takes raw values x and computes (x - mean)·scale per channel first, as "
                        "OpenCV's blobFromImage does; mean in the net's input channel order (B,G,R with --bgr)")
    p.add_argument("--scale", type=channel_values, metavar="S[,S,S]",
                   help="the scale of --mean's preprocessing (one value, or one per channel)")
    p.add_argument("--fold-bn", action="store_true",
                   help="merge BatchNorm + Scale into the Convolution / InnerProduct before them "
                        "(not exact: the error is measured as always)")
    p.add_argument("--no-fold-padding", dest="fold_padding", action="store_false",
                   help="keep zero padding as its own layer instead of folding it into the next convolution's pad")


def channel_values(text: str) -> List[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("not a number or a comma-separated list of numbers: %r" % text)


def deploy_options(args) -> DeployOptions:
    return DeployOptions(bgr=args.bgr, mean=args.mean, scale=args.scale, fold_bn=args.fold_bn,
                         fold_padding=args.fold_padding)


@dataclass
class ImportOptions:
    """What the import stage is asked to do, besides which files and where to."""
    backend: str  # "native" or "pycaffe"
    prototxt: Optional[str] = None
    profile: str = DEFAULT_PROFILE
    tolerance: float = DEFAULT_TOLERANCE
    report: Optional[str] = None
    per_layer: bool = False
    verify: bool = True
    debug: bool = False
    progress: bool = False  # progress bars on stderr even when it is not a terminal
    runtime: Optional[str] = None  # the runtime the stage runs in, as reports name it (runtimes.py)
    deploy: DeployOptions = field(default_factory=DeployOptions)

    def argv(self, files: List[str], output: str) -> List[str]:
        """The import stage's command line for `files` -> `output`."""
        argv = list(files) + ["-o", output, "--profile", self.profile, "--tolerance", repr(self.tolerance),
                              "--backend", self.backend]
        if self.prototxt:
            argv += ["--prototxt", self.prototxt]
        if self.report:
            argv += ["--report", self.report]
        if self.runtime:
            argv += ["--runtime", self.runtime]
        argv += self.deploy.argv()
        for flag, wanted in (("--per-layer", self.per_layer), ("--no-verify", not self.verify),
                             ("--debug", self.debug), ("--progress", self.progress)):
            if wanted:
                argv.append(flag)
        return argv
