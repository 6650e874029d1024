"""The networks the recipe trains: v2 (the shipped VGG-style CNN) and v3 (the cheaper residual
candidate of issue 23), built only from ops that int8 TFLite and the Edge TPU compiler accept."""

from __future__ import annotations


def _cbr(x, filters: int, stride: int, names: tuple[str, str, str], relu: bool = True):
    """3x3 Conv (no bias) - BatchNorm - ReLU, the layers named as the released weights expect."""
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=names[0])(x)
    x = layers.BatchNormalization(name=names[1])(x)
    return layers.ReLU(name=names[2])(x) if relu else x


def _head(inp, x, n_classes: int, name: str):
    """Global average pool, dropout, float32 logits (the temperature is fitted on them)."""
    import keras
    from keras import layers

    x = layers.Dropout(0.4, name="head_drop")(layers.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, layers.Dense(n_classes, name="logits", dtype="float32")(x), name=name)


def build_model(width: int = 32, n_classes: int = 7):
    """Four Conv-BN-ReLU stages (48 -> 24 -> 12 -> 6 -> 3), GAP, dropout, Dense logits.

    Kept at v1's ~96 M multiply-adds per face: the per-face budget on the device is what bounds
    it, so v2's gain comes from the recipe (schedule, augmentation, EMA), not a bigger network.
    """
    import keras
    from keras import layers

    inp = keras.Input((48, 48, 1), name="face")
    x = inp
    for stage, (filters, convs) in enumerate([(width, 2), (width * 2, 2), (width * 4, 2), (width * 8, 1)]):
        for j in range(convs):
            x = _cbr(x, filters, 1, (f"s{stage}c{j}", f"s{stage}bn{j}", f"s{stage}relu{j}"))
        x = layers.MaxPooling2D(2, name=f"s{stage}pool")(x)
        if stage >= 1:
            x = layers.Dropout(0.1 * stage, name=f"s{stage}drop")(x)
    return _head(inp, x, n_classes, "feredge_fer")


def build_v3(width: int = 32, n_classes: int = 7, stages: tuple[float, ...] = (1.5, 3, 4), stem: float = 0.25):
    """v3 candidate: cheap at full resolution, capacity where channels are cheap (issue 23).

    A 1->w/4 stem at 48x48 and a strided 3x3 to 24x24 (w), then per stage a strided 3x3 and one
    residual block of two 3x3 Conv-BN-ReLU at 12x12 (1.5w), 6x6 (3w) and 3x3 (4w). Residual ADD,
    ReLU and dense 3x3 convolutions are int8- and Edge TPU-friendly and run near peak in XNNPACK's
    int8 kernels; no depthwise convolutions (memory-bound on a Cortex-A72). Channels double as
    the side halves, so each block costs about the same. Width 32: 20.6 M multiply-adds, 0.67 M
    parameters, 0.92x the int8 latency of fer's mini-XCEPTION on an AVX2 EPYC core (LiteRT, one
    thread, interleaved; a 16-channel stem measured 1.12x, so the stem is 8 channels).
    """
    import keras
    from keras import layers

    def cbr(x, filters, stride, name, relu=True):
        return _cbr(x, filters, stride, (f"{name}c", f"{name}bn", f"{name}relu"), relu)

    inp = keras.Input((48, 48, 1), name="face")
    x = cbr(inp, int(width * stem), 1, "stem0")
    x = cbr(x, width, 2, "stem1")  # 24x24
    for stage, filters in enumerate(int(width * m) for m in stages):  # 12, 6, 3
        x = cbr(x, filters, 2, f"s{stage}down")
        y = cbr(x, filters, 1, f"s{stage}a")
        y = cbr(y, filters, 1, f"s{stage}b", relu=False)
        x = layers.ReLU(name=f"s{stage}out")(layers.Add(name=f"s{stage}add")([x, y]))
        if stage >= 1:
            x = layers.Dropout(0.1 * stage, name=f"s{stage}drop")(x)
    return _head(inp, x, n_classes, "feredge_fer_v3")


ARCHITECTURES = {"v2": build_model, "v3": build_v3}

# What the model card says of each network (scripts/model_card.py adds parameters and multiply-adds).
CARD_TEXT = {
    "v2": "4 stages of Conv3x3-BatchNorm-ReLU (32, 64, 128, 256 channels; 2, 2, 2, 1 convolutions) with "
          "max-pooling and dropout, global average pooling, a Dense layer with 7 **logits**",
    "v3": "a cheap full-resolution stem (1 -> 8 channels at 48x48, then a strided 3x3 to 32 channels at "
          "24x24), then three stages at 12x12, 6x6 and 3x3 (48, 96, 128 channels), each a strided "
          "Conv3x3-BatchNorm-ReLU and one residual block of two Conv3x3-BatchNorm with a ReLU after the sum; "
          "dropout, global average pooling, a Dense layer with 7 **logits**; no depthwise convolutions "
          "(memory-bound on a Cortex-A72)",
}


def count_macs(model) -> int:
    """Multiply-adds per face of the Conv2D and Dense layers (what the budget counts)."""
    from keras import layers

    total = 0
    for la in model.layers:
        if isinstance(la, layers.Conv2D):
            kh, kw, cin, cout = la.kernel.shape
            _, h, w, _ = la.output.shape
            total += int(kh * kw * cin * cout * h * w)
        elif isinstance(la, layers.Dense):
            total += int(la.kernel.shape[0] * la.kernel.shape[1])
    return total
