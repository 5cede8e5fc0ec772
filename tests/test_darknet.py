"""DarkNet-53 backbone shapes, freezing, and the Darknet .weights reader against hand-written files."""

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from seqtr_lib.model.darknet import (
    ConvBNLeaky,
    DarkNet53,
    DarknetWeightsError,
    conv_layers,
    freeze,
    load_darknet_weights,
    save_darknet_weights,
)

WIDTH = 0.25  # every channel count of DarkNet-53 divides by 4, so the small model is exact


def darknet_layer_shapes(width: float) -> list[tuple[int, int, int]]:
    """(in, out, kernel) of each conv in Darknet file order, written from the YOLOv3 cfg."""
    c = [int(n * width) for n in (32, 64, 128, 256, 512, 1024)]
    shapes = [(3, c[0], 3)]
    for stage, num_blocks in enumerate((1, 2, 8, 8, 4), start=1):
        shapes.append((c[stage - 1], c[stage], 3))
        shapes += [(c[stage], c[stage] // 2, 1), (c[stage] // 2, c[stage], 3)] * num_blocks
    shapes += [(c[5], c[4], 1), (c[4], c[5], 3)] * 3  # YOLOv3's stride-32 head convs
    return shapes


def layer_size(shape: tuple[int, int, int]) -> int:
    """Floats of a conv+BN layer: beta, gamma, mean, var (out each), then out*in*k*k weights."""
    c_in, c_out, k = shape
    return 4 * c_out + c_out * c_in * k * k


def write_weights(path, values: np.ndarray, version=(0, 2, 0), seen=7) -> None:
    """A Darknet file written byte by byte, independently of save_darknet_weights."""
    seen_format = "<i8" if version[0] * 10 + version[1] >= 2 else "<i4"
    header = np.array(version, dtype="<i4").tobytes() + np.array([seen], seen_format).tobytes()
    path.write_bytes(header + values.astype("<f4").tobytes())


def index_stream(count: int) -> np.ndarray:
    """Float stream whose i-th value is i, so each parameter shows where it was read from."""
    return np.arange(count, dtype=np.float32)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def expected_block(start: int, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """What a conv+BN layer holds when its values start at `start` of an index stream."""
    c_in, c_out, k = shape
    ramp = torch.arange(start, start + layer_size(shape), dtype=torch.float32)
    return {"bias": ramp[:c_out], "weight": ramp[c_out:2 * c_out],
            "running_mean": ramp[2 * c_out:3 * c_out], "running_var": ramp[3 * c_out:4 * c_out],
            "conv": ramp[4 * c_out:].reshape(c_out, c_in, k, k)}


def assert_layer_holds(module: ConvBNLeaky, expected: dict[str, torch.Tensor]) -> None:
    assert torch.equal(module.bn.bias, expected["bias"])
    assert torch.equal(module.bn.weight, expected["weight"])
    assert torch.equal(module.bn.running_mean, expected["running_mean"])
    assert torch.equal(module.bn.running_var, expected["running_var"])
    assert torch.equal(module.conv.weight, expected["conv"])


@pytest.fixture(scope="module")
def shapes() -> list[tuple[int, int, int]]:
    return darknet_layer_shapes(WIDTH)


@pytest.fixture(scope="module")
def eval_model() -> DarkNet53:
    return DarkNet53(WIDTH).eval()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("height,width", [(64, 64), (96, 128), (70, 90)])
def test_feature_maps_have_strides_8_16_32_and_declared_channels(eval_model, batch, height, width):
    model = eval_model
    assert model.out_channels == (64, 128, 256)
    images = torch.rand(batch, 3, height, width) * 255
    with torch.no_grad():
        maps = model(images)
    assert len(maps) == 3
    for feature, channels, stride in zip(maps, model.out_channels, (8, 16, 32)):
        assert feature.shape == (batch, channels, math.ceil(height / stride), math.ceil(width / stride))


def test_full_width_has_reference_channels_and_58_darknet_layers():
    model = DarkNet53()
    assert model.out_channels == (256, 512, 1024)
    layers = list(conv_layers(model))
    assert [(conv.in_channels, conv.out_channels, conv.kernel_size[0]) for _, conv, _ in layers] \
        == darknet_layer_shapes(1.0)
    assert all(bn is not None and conv.bias is None for _, conv, bn in layers)


def test_tiny_width_keeps_at_least_eight_channels():
    model = DarkNet53(0.125)
    assert model.out_channels == (32, 64, 128)
    assert min(conv.out_channels for _, conv, _ in conv_layers(model)) == 8


def test_hand_written_file_fills_layers_in_darknet_order(tmp_path, shapes):
    sizes = [layer_size(s) for s in shapes]
    total = sum(sizes)
    path = tmp_path / "index.weights"
    write_weights(path, index_stream(total))
    model = DarkNet53(WIDTH)

    assert load_darknet_weights(model, path) == total
    assert_layer_holds(model.layers.stem, expected_block(0, shapes[0]))
    assert_layer_holds(model.layers.down1, expected_block(sizes[0], shapes[1]))
    assert_layer_holds(model.layers.stage1[0].reduce, expected_block(sum(sizes[:2]), shapes[2]))
    # stage3 starts after stem, down1, stage1 (2), down2, stage2 (4), down3: layer 10.
    assert_layer_holds(model.layers.stage3[0].reduce, expected_block(sum(sizes[:10]), shapes[10]))
    assert_layer_holds(model.layers.neck[0], expected_block(sum(sizes[:52]), shapes[52]))
    assert_layer_holds(model.layers.neck_expand, expected_block(total - sizes[-1], shapes[-1]))


@pytest.mark.parametrize("version", [(0, 1, 0), (0, 2, 0), (1, 0, 3)])
def test_header_seen_width_follows_version(tmp_path, shapes, version):
    total = sum(layer_size(s) for s in shapes)
    path = tmp_path / "versioned.weights"
    write_weights(path, index_stream(total), version=version, seen=123456)
    model = DarkNet53(WIDTH)

    assert load_darknet_weights(model, path) == total
    # A header misread by 4 bytes would shift every value by one.
    assert_layer_holds(model.layers.stem, expected_block(0, shapes[0]))
    assert_layer_holds(model.layers.neck_expand, expected_block(total - layer_size(shapes[-1]),
                                                                shapes[-1]))


def test_partial_file_loads_whole_leading_layers_and_leaves_the_rest(tmp_path, shapes, caplog):
    covered = 3
    count = sum(layer_size(s) for s in shapes[:covered])
    path = tmp_path / "partial.weights"
    write_weights(path, index_stream(count))
    model = DarkNet53(WIDTH)
    before = snapshot(model)

    with caplog.at_level(logging.INFO, logger="seqtr_lib.model.darknet"):
        assert load_darknet_weights(model, path) == count
    assert f"loaded {covered} of {len(shapes)}" in caplog.text
    assert "from 'layers.stage1.0.expand' on keep their initialisation" in caplog.text
    assert_layer_holds(model.layers.stage1[0].reduce,
                       expected_block(count - layer_size(shapes[2]), shapes[2]))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"layers.{m}.{p}" for m in ("stem", "down1", "stage1.0.reduce")
                       for p in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                 "bn.running_var")}


def test_longer_file_loads_every_layer_and_reports_leftovers(tmp_path, shapes, caplog):
    total = sum(layer_size(s) for s in shapes)
    path = tmp_path / "yolo_like.weights"
    write_weights(path, index_stream(total + 255))
    model = DarkNet53(WIDTH)

    with caplog.at_level(logging.INFO, logger="seqtr_lib.model.darknet"):
        assert load_darknet_weights(model, path) == total
    assert "255 float32 values left unread" in caplog.text
    assert_layer_holds(model.layers.neck_expand, expected_block(total - layer_size(shapes[-1]),
                                                                shapes[-1]))


def test_file_ending_inside_a_layer_names_it_and_changes_nothing(tmp_path, shapes):
    had = layer_size(shapes[2]) - 5
    path = tmp_path / "truncated.weights"
    write_weights(path, index_stream(layer_size(shapes[0]) + layer_size(shapes[1]) + had))
    model = DarkNet53(WIDTH)
    before = snapshot(model)

    with pytest.raises(DarknetWeightsError) as error:
        load_darknet_weights(model, path)
    message = str(error.value)
    assert "layer 2 ('layers.stage1.0.reduce')" in message
    assert f"needs {layer_size(shapes[2])}" in message and f"only {had} remain" in message
    assert str(path) in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_size_not_a_whole_number_of_floats_is_rejected(tmp_path):
    path = tmp_path / "odd.weights"
    write_weights(path, index_stream(10))
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    with pytest.raises(DarknetWeightsError, match="multiple of 4"):
        load_darknet_weights(DarkNet53(WIDTH), path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 8, np.array([0, 2, 0, 5], "<i4").tobytes()])
def test_file_too_short_for_a_header_is_rejected(tmp_path, content):
    # The last case is a 0.2 header whose 8-byte `seen` has only 4 bytes.
    path = tmp_path / "short.weights"
    path.write_bytes(content)
    with pytest.raises(DarknetWeightsError, match="too short"):
        load_darknet_weights(DarkNet53(WIDTH), path)


@pytest.mark.parametrize("version", [(12345, 0, 0), (0, -1, 0), (0, 2, 1000)])
def test_implausible_version_is_rejected(tmp_path, version):
    path = tmp_path / "not_darknet.weights"
    write_weights(path, index_stream(100), version=version)
    with pytest.raises(DarknetWeightsError, match="not a Darknet version"):
        load_darknet_weights(DarkNet53(WIDTH), path)


def test_conv_without_batch_norm_reads_bias_then_weights(tmp_path):
    model = nn.Sequential(ConvBNLeaky(3, 8, 3), nn.Conv2d(8, 5, 1))
    first = 4 * 8 + 8 * 3 * 9
    total = first + 5 + 5 * 8
    path = tmp_path / "detector.weights"
    write_weights(path, index_stream(total))

    assert load_darknet_weights(model, path) == total
    assert_layer_holds(model[0], expected_block(0, (3, 8, 3)))
    assert torch.equal(model[1].bias, torch.arange(first, first + 5, dtype=torch.float32))
    assert torch.equal(model[1].weight.flatten(),
                       torch.arange(first + 5, total, dtype=torch.float32))


@pytest.mark.parametrize("version", [(0, 1, 0), (0, 2, 0)])
def test_save_then_load_restores_every_parameter_and_statistic(tmp_path, version):
    torch.manual_seed(0)
    source = DarkNet53(0.125)
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) + (2 if "running_var" in name else 0))
    path = tmp_path / "round_trip.weights"
    save_darknet_weights(source, path, version=version, seen=99)
    header_bytes = 16 if version == (0, 1, 0) else 20
    target = DarkNet53(0.125)

    assert load_darknet_weights(target, path) == (path.stat().st_size - header_bytes) // 4
    restored = target.state_dict()
    for name, tensor in source.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # not part of the Darknet format
            assert torch.equal(restored[name], tensor), name


def trainable_module(parameter_name: str) -> bool:
    return parameter_name.startswith(("layers.neck_reduce.", "layers.neck_expand."))


def test_freeze_last_two_trains_only_the_last_two_head_convs():
    model = DarkNet53(WIDTH)
    freeze(model, 2)
    pattern = {name: p.requires_grad for name, p in model.named_parameters()}
    assert pattern == {name: trainable_module(name) for name in pattern}
    assert sum(pattern.values()) == 6  # two convs, each with conv weight, BN weight, BN bias


def test_frozen_batch_norm_stays_in_eval_and_keeps_its_statistics():
    torch.manual_seed(0)
    model = DarkNet53(WIDTH)
    freeze(model, 2)
    model.eval()
    model.train()
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert {name: m.training for name, m in norms.items()} \
        == {name: trainable_module(name + ".") for name in norms}
    before = {name: m.running_mean.clone() for name, m in norms.items()}

    model(torch.rand(2, 3, 64, 64) * 255)

    for name, m in norms.items():
        unchanged = torch.equal(m.running_mean, before[name])
        assert unchanged == (not trainable_module(name + ".")), name


def test_freeze_minus_one_unfreezes_everything_again():
    model = DarkNet53(WIDTH)
    freeze(model, 0)
    assert not any(p.requires_grad for p in model.parameters())
    freeze(model, -1)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("trainable_last", [-2, 15])
def test_freeze_rejects_counts_outside_the_module_list(trainable_last):
    with pytest.raises(ValueError, match="trainable_last"):
        freeze(DarkNet53(WIDTH), trainable_last)
