"""BatchNorm, LayerNormalization, Keras Normalization and Rescaling, and LRN."""
from __future__ import annotations

import numpy as np

from . import BroadcastsTo, Handler, register
from .chain import Chain, Step, power
from .reduction import broadcast_steps, reduce_steps, ReductionSteps
from .shape import in_blob_order, order_problem


def _per_channel(layer, ctx, values):
    """A scalar or per-channel sequence as a float32 vector in the bottom blob's feature order."""
    channels = layer.output_shape[-1]
    vector = np.broadcast_to(np.asarray(values, np.float32).reshape(-1), (channels,))
    return in_blob_order(np.ascontiguousarray(vector), ctx.bottom(layer))


def _vector_problem(layer, values, what):
    size = np.asarray(values).size
    if size not in (1, layer.output_shape[-1]):
        return "%s has %d values for %d channels" % (what, size, layer.output_shape[-1])
    return None


def _emit(layer, ctx, steps):
    chain = Chain(ctx, layer)
    chain.follow(steps)
    chain.produce()


def _scale(suffix, scale, bias=None) -> Step:
    """Scale over the channel axis: x·scale (+ bias), vectors given as callables."""
    blobs = [scale] + ([bias] if bias is not None else [])
    return Step(suffix, "Scale", {"scale_param": {"bias_term": bias is not None}}, blobs)


@register("batch_norm")
class BatchNorm(Handler):
    config_keys = ("epsilon",)
    array_layouts = {"moving_mean": "(C)", "moving_variance": "(C)", "gamma?": "(C; ones if absent)",
                     "beta?": "(C; zeros if absent)"}
    notes = "normalises the last axis"
    summary = "BatchNorm (global statistics, TF epsilon) + Scale for gamma/beta"
    caffe_layers = ("BatchNorm", "Scale")

    def array_shapes(self, layer, model):
        channels = (layer.output_shape[-1],)
        return {"moving_mean": channels, "moving_variance": channels, "gamma": channels, "beta": channels}

    def check(self, layer, model, profile):
        if len(layer.output_shape) not in (2, 4):
            return "only 2-D and 4-D inputs are supported"
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        ordered = lambda role: lambda: _per_channel(layer, ctx, layer.array(role))
        steps = [Step("bn", "BatchNorm", {"batch_norm_param": {
            "use_global_stats": True, "eps": float(layer.config["epsilon"])}},
            [ordered("moving_mean"), ordered("moving_variance"), lambda: np.ones(1, np.float32)])]
        if layer.has("gamma") or layer.has("beta"):
            gamma = ordered("gamma") if layer.has("gamma") else \
                lambda: np.ones(layer.output_shape[-1], np.float32)
            steps.append(_scale("scale", gamma, ordered("beta") if layer.has("beta") else None))
        _emit(layer, ctx, steps)


@register("layer_norm")
class LayerNorm(Handler):
    config_keys = ("epsilon",)
    array_layouts = {"gamma?": "(C; ones if absent)", "beta?": "(C; zeros if absent)"}
    notes = "normalises the last axis: (x − mean)·(variance + epsilon)^-1/2·gamma + beta"
    summary = ("(x - mean)·(variance + epsilon)^-1/2 over the channels of each position: the "
               "reduce handler's mean (Pooling), ones-weight layers broadcasting back, Eltwise for "
               "the difference and the products, Power for the root, Scale for gamma/beta")
    caffe_layers = ("Pooling", "Reshape", "Convolution", "InnerProduct", "Eltwise", "Power", "Scale")

    def array_shapes(self, layer, model):
        channels = (layer.output_shape[-1],)
        return {"gamma": channels, "beta": channels}

    def check(self, layer, model, profile):
        if len(layer.output_shape) not in (2, 4):
            return "only 2-D and 4-D inputs are supported"
        return order_problem(layer, model)

    def emit(self, layer, ctx):
        # Exact, not an approximation: every step computes one term of LayerNormalization's
        # definition, mean and variance = mean((x - mean)²) as Pooling averages over the channel
        # axis (a window of C rows over the blob viewed as (N, 1, C, H·W): the sum of the C values
        # divided by C, as TensorFlow's mean), broadcast back over the channels by ones weights
        # (x·1 is exact). Only the rounding order differs from TensorFlow's: Keras computes
        # x·inv - mean·inv, this (x - mean)·inv, which cancels no better or worse than float32.
        bottom = ctx.bottom(layer)
        shape = bottom.shape
        steps = ReductionSteps(ctx, layer, bottom.name, shape)
        reduce_steps(steps, [1], "mean")
        broadcast_steps(steps, shape)
        centered = steps.add("center", "Eltwise", {"eltwise_param": {
            "operation": "SUM", "coeff": [1.0, -1.0]}}, shape, bottoms=[bottom.name, steps.top])[0]
        steps.add("square", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, shape,
                  bottoms=[centered, centered])
        reduce_steps(steps, [1], "mean")
        steps.power("rsqrt", power=-0.5, shift=float(layer.config["epsilon"]))
        broadcast_steps(steps, shape)
        steps.add("normalized", "Eltwise", {"eltwise_param": {"operation": "PROD"}}, shape,
                  bottoms=[centered, steps.top])
        channels = layer.output_shape[-1]
        gamma = layer.array("gamma") if layer.has("gamma") else np.ones(channels, np.float32)
        beta = layer.array("beta") if layer.has("beta") else np.zeros(channels, np.float32)
        steps.add("scale", "Scale", {"scale_param": {"bias_term": True}}, shape, blobs=[
            lambda: in_blob_order(gamma, bottom), lambda: in_blob_order(beta, bottom)])
        steps.finish(bottom.flattened_from)


@register("rescale")
class Rescale(Handler):
    array_layouts = {"scale?": "(C)", "offset?": "(C)"}
    notes = ("x·scale + offset; `scale` and `offset` each in the config (a number or a per-channel "
             "list) or as an array (per channel: learned factors such as ConvNeXt's LayerScale); "
             "absent: 1 and 0")
    summary = "x·scale + offset: Power for scalars, Scale with bias per channel"
    caffe_layers = ("Power", "Scale")

    def array_shapes(self, layer, model):
        return {"scale": (layer.output_shape[-1],), "offset": (layer.output_shape[-1],)}

    def check(self, layer, model, profile):
        for key in ("scale", "offset"):
            if key in layer.config and layer.has(key):
                return "'%s' both in the config and as an array" % key
            problem = _vector_problem(layer, layer.config.get(key, 0.0), key)
            if problem:
                return problem
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        scale, offset = (layer.array(key) if layer.has(key) else layer.config.get(key, default)
                         for key, default in (("scale", 1.0), ("offset", 0.0)))
        if np.size(scale) == 1 and np.size(offset) == 1:
            step = power("rescale", np.ravel(scale)[0], np.ravel(offset)[0])
        elif np.size(offset) == 1 and np.ravel(offset)[0] == 0:
            step = _scale("rescale", lambda: _per_channel(layer, ctx, scale))
        else:
            step = _scale("rescale", lambda: _per_channel(layer, ctx, scale),
                          lambda: _per_channel(layer, ctx, offset))
        _emit(layer, ctx, [step])


@register("normalize")
class Normalize(Handler):
    config_keys = ("epsilon",)
    array_layouts = {"mean": "(C, or broadcasting to it)", "variance": "(C, or broadcasting to it)"}
    notes = "(x − mean) / max(sqrt(variance), epsilon)"
    summary = "(x - mean) / max(sqrt(variance), epsilon): subtract, then multiply (Power or Scale)"
    caffe_layers = ("Power", "Scale")

    def array_shapes(self, layer, model):
        # one value, or one per channel, in any shape that broadcasts over the input
        per_channel = BroadcastsTo((1,) * (len(layer.output_shape) - 1) + (layer.output_shape[-1],))
        return {"mean": per_channel, "variance": per_channel}

    def check(self, layer, model, profile):
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        # Subtracting first, as Keras does, keeps the result exact when |mean| >> std.
        def inverse_std():
            std = np.maximum(np.sqrt(layer.array("variance")), np.float32(layer.config["epsilon"]))
            return (1.0 / std.astype(np.float64)).astype(np.float32)

        if layer.array("mean").size == 1 and layer.array("variance").size == 1:
            steps = [power("center", shift=-float(layer.array("mean").reshape(-1)[0])),
                     power("scale", float(inverse_std().reshape(-1)[0]))]
        else:
            steps = [_scale("center", lambda: _per_channel(layer, ctx, 1.0),
                            lambda: _per_channel(layer, ctx, -layer.array("mean"))),
                     _scale("scale", lambda: _per_channel(layer, ctx, inverse_std()))]
        _emit(layer, ctx, steps)


@register("lrn")
class LRN(Handler):
    config_keys = ("depth_radius", "bias", "alpha", "beta")
    notes = "TensorFlow's definition"
    summary = ("LRN across channels in the portable form: k = 1, alpha·n/bias, then "
               "Power(bias^-beta) (OpenCV ignores k)")
    caffe_layers = ("LRN", "Power")

    def check(self, layer, model, profile):
        if len(layer.output_shape) != 4:
            return "LRN on a %d-D tensor (only 4-D, over channels)" % len(layer.output_shape)
        if float(layer.config["bias"]) <= 0:
            return "LRN with bias %s <= 0" % layer.config["bias"]
        return order_problem(layer, model, profile)

    def emit(self, layer, ctx):
        config = layer.config
        size = 2 * int(config["depth_radius"]) + 1
        bias, beta = float(config["bias"]), float(config["beta"])
        # x / (bias + alpha·sum)^beta = bias^-beta · x / (1 + (alpha/bias)·sum)^beta
        steps = [Step("lrn", "LRN", {"lrn_param": {
            "local_size": size, "alpha": float(config["alpha"]) * size / bias, "beta": beta,
            "k": 1.0, "norm_region": "ACROSS_CHANNELS"}})]
        if bias != 1.0:
            steps.append(power("scale", bias ** -beta))
        _emit(layer, ctx, steps)
