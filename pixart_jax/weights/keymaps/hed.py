"""HED key map: the standard `ControlNetHED.pth` (ControlNetHED_Apache2) -> our HED (pixart_jax/models/hed.py)."""
from pixart_jax.weights.mapping import Rule


def hed_rules(convolutions):
    """The rules of a HED whose stages (block1, block2, ...) have `convolutions[b]` 3×3 convolutions each."""
    rules = [Rule("norm", "norm", "param")]
    for b, convs in enumerate(convolutions):
        rules += [Rule(f"blocks.{b}.convs.{j}", f"block{b + 1}.convs.{j}", "conv") for j in range(convs)]
        rules.append(Rule(f"blocks.{b}.projection", f"block{b + 1}.projection", "conv"))
    return rules
