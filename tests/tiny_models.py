"""Tiny synthetic insightface-shaped ONNX models made for tests: good for plumbing, not accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Strides of the SCRFD feature pyramid, in the order insightface reads the outputs.
STRIDES = (8, 16, 32)
#: The only stride at which the tiny detector reports faces: one face per 32x32 cell of its input.
FACE_CELL = 32
#: Weights of the network's input channels (R, G, B after insightface's swapRB) in the "face" signal.
CHANNEL_WEIGHTS = (0.7, 0.2, 0.1)
#: A cell is a face when its signal is at least this (input scaled to about [-1, 1]) ...
MIN_SIGNAL = -0.5
#: ... and within about this of the brightest cell of the frame (so an ordinary frame gives a few faces, not all).
MAX_GAP = 0.1
#: ArcFace's canonical 112x112 landmark template (insightface.utils.face_align.arcface_dst).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
_OPSET = 17
_IR_VERSION = 8  # what onnxruntime releases of the last years all read


def _save(graph, path: Path) -> Path:  # noqa: ANN001 - onnx.GraphProto
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="vidpipe-tests")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_tiny_scrfd(path: Path, *, batched: bool = False) -> Path:
    """Write a detector with the 9-output SCRFD signature (3 strides, 2 anchors, keypoints) to `path`.

    `batched=True` writes the variant some SCRFD exports have: input Bx3xHxW with a dynamic batch and
    outputs (B, N, 1|4|10), every image scored on its own (its own brightest cell).

    Input `input.1` is 1x3xHxW (H and W dynamic, multiples of 32), like the stock det_10g export. For each
    stride s the outputs are scores (N, 1), box distances (N, 4) and keypoint offsets (N, 10) with
    N = (H/s) * (W/s) * 2, ordered scores 8/16/32, boxes 8/16/32, keypoints 8/16/32 as SCRFD.forward reads them.

    What it "detects", deterministically: the network input is split into 32x32 cells; a cell's signal is
    the mean of its pixels weighted by CHANNEL_WEIGHTS over the network's (R, G, B) channels. A cell is a
    face (score about 0.98) when its signal is at least MIN_SIGNAL and within MAX_GAP of the frame's
    brightest cell: a bright red square filling one cell of a dark frame is one face; an ordinary frame
    gives its brightest cell or few. A face's box is exactly its cell and its five keypoints sit inside it
    where ArcFace's template puts them, so alignment crops the cell. Strides 8 and 16 never fire.
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value) -> str:  # noqa: ANN001 - array-like
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    const("channel_weights", np.array(CHANNEL_WEIGHTS, dtype=np.float32).reshape(1, 3, 1, 1))
    column = [0, -1, 1] if batched else [-1, 1]  # 0: keep the batch dimension
    inits.append(numpy_helper.from_array(np.array(column, dtype=np.int64), "column"))
    const("zero", 0.0)
    const("never", -20.0)
    const("sharp", 40.0)
    const("max_gap", MAX_GAP)
    const("min_signal", MIN_SIGNAL)
    # Box = the cell whose top-left corner is the anchor centre; keypoints = the template scaled to the cell.
    const("box_distances", np.array([[0.0, 0.0, 1.0, 1.0]]))
    const("kps_distances", (ARCFACE_TEMPLATE / 112.0).reshape(1, 10))

    for s in STRIDES:
        nodes += [
            helper.make_node("AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Conv", [f"pool{s}", "channel_weights"], [f"signal{s}"]),  # (1, 1, H/s, W/s)
        ]
        if s == FACE_CELL:
            nodes += [
                # near_max = sigmoid(sharp * (signal - max + gap)); bright = sigmoid(sharp * (signal - min_signal))
                helper.make_node("ReduceMax", [f"signal{s}"], [f"max{s}"], keepdims=1, axes=[1, 2, 3]),
                helper.make_node("Sub", [f"signal{s}", f"max{s}"], [f"below_max{s}"]),
                helper.make_node("Add", [f"below_max{s}", "max_gap"], [f"gap{s}"]),
                helper.make_node("Mul", [f"gap{s}", "sharp"], [f"gap_logit{s}"]),
                helper.make_node("Sigmoid", [f"gap_logit{s}"], [f"near_max{s}"]),
                helper.make_node("Sub", [f"signal{s}", "min_signal"], [f"over{s}"]),
                helper.make_node("Mul", [f"over{s}", "sharp"], [f"over_logit{s}"]),
                helper.make_node("Sigmoid", [f"over_logit{s}"], [f"bright{s}"]),
                helper.make_node("Mul", [f"near_max{s}", f"bright{s}"], [f"cell_score{s}"]),
            ]
        else:
            nodes += [
                helper.make_node("Mul", [f"signal{s}", "zero"], [f"flat{s}"]),
                helper.make_node("Add", [f"flat{s}", "never"], [f"never_logit{s}"]),
                helper.make_node("Sigmoid", [f"never_logit{s}"], [f"cell_score{s}"]),
            ]
        nodes += [
            # (1, 1, h, w) -> (h*w, 1) in row-major cell order, then two identical anchors per cell -> (h*w*2, 1).
            helper.make_node("Transpose", [f"cell_score{s}"], [f"hw{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"hw{s}", "column"], [f"per_cell{s}"]),
            helper.make_node("Concat", [f"per_cell{s}", f"per_cell{s}"], [f"per_anchor{s}"], axis=2 if batched else 1),
            helper.make_node("Reshape", [f"per_anchor{s}", "column"], [f"score_{s}"]),
            # Constant distances broadcast to one row per anchor: score * 0 + distances.
            helper.make_node("Mul", [f"score_{s}", "zero"], [f"rows{s}"]),
            helper.make_node("Add", [f"rows{s}", "box_distances"], [f"bbox_{s}"]),
            helper.make_node("Add", [f"rows{s}", "kps_distances"], [f"kps_{s}"]),
        ]

    def out(name: str, s: int, width: int):  # noqa: ANN202 - onnx.ValueInfoProto
        shape = ["batch", f"anchors{s}", width] if batched else [f"anchors{s}", width]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [
            helper.make_tensor_value_info(
                "input.1", TensorProto.FLOAT, ["batch" if batched else 1, 3, "height", "width"]
            )
        ],
        [out(f"score_{s}", s, 1) for s in STRIDES]
        + [out(f"bbox_{s}", s, 4) for s in STRIDES]
        + [out(f"kps_{s}", s, 10) for s in STRIDES],
        initializer=inits,
    )
    return _save(graph, path)


def build_tiny_arcface(path: Path, dim: int = 512, *, seed: int = 0) -> Path:
    """Write a recognizer with ArcFace's signature: Nx3x112x112 (dynamic N) -> N x dim.

    The embedding is a fixed random projection of the crop average-pooled to 7x7 per channel, so crops that
    differ in colour or layout get different embeddings and identical crops identical ones.
    """
    from onnx import TensorProto, helper, numpy_helper

    projection = np.random.default_rng(seed).standard_normal((3 * 7 * 7, dim)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "projection"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(projection, "projection")],
    )
    return _save(graph, path)


def build_tiny_pack(folder: Path, dim: int = 512) -> Path:
    """Write a pack with buffalo_l's file names (det_10g.onnx, w600k_r50.onnx) into `folder`; returns it."""
    folder = Path(folder)
    build_tiny_scrfd(folder / "det_10g.onnx")
    build_tiny_arcface(folder / "w600k_r50.onnx", dim)
    return folder
