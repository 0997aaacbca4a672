"""What the model predicts: ε (PixArt's released models) or v = α ε - σ x_0 (diffusers' "v_prediction").

For x = α x_0 + σ ε (α = √ᾱ_t, σ = √(1-ᾱ_t)) both give the same pair (x̂_0, ε̂); samplers, the training loss and
LCD go through `denoise` so that either kind of model works everywhere. v-prediction keeps the x_0 signal at
full weight where x is almost pure noise, where ε-prediction sees it scaled by α (≈ 0.006 at t = 999).
"""
import enum

from pixart_jax.choices import choose


class PredictionType(enum.StrEnum):
    epsilon = "epsilon"
    v_prediction = "v_prediction"


def check_prediction_type(prediction_type):
    return choose(PredictionType, prediction_type, "prediction_type")


def denoise(prediction_type, x, output, alpha, sigma):
    """(x̂_0, ε̂) from the model output at x = α x_0 + σ ε (diffusers' formulas, in its order of operations)."""
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output, alpha * output + sigma * x
    return (x - sigma * output) / alpha, output


def training_target(prediction_type, x0, noise, alpha, sigma):
    """What the model is regressed onto for x = α x_0 + σ ε: ε, or v = α ε - σ x_0."""
    if prediction_type == "v_prediction":
        return alpha * noise - sigma * x0
    return noise
