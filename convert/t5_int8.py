"""Write the int8 T5 of a Hugging Face T5 folder once (every linear as int8 codes + per-channel scales), so that
generation never reads the float encoder (T5-XXL: 19 GB in float32, about 4.9 GB as int8 with a 16-bit embedding):

  python -m convert.t5_int8 --src PIPELINE/text_encoder --dst PIPELINE_INT8/text_encoder [--dtype float16]

(the same as `pixart-jax quantize-t5 ...`). Use the output as a pipeline's text_encoder/ with --int8 / int8=True.
"""
import sys

from pixart_jax.cli import main as cli_main


def main(argv=None):
    return cli_main(["quantize-t5", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
