"""Which generation requests can share one forward of the denoising loop (dynamic batching): those compiled the same
way and reading the same scalars. Everything else (prompts, negative prompts, seeds, image counts, control images,
null captions) is per row, so each request in a batch keeps the images it gets alone (its own draws: the sampler's
`groups`)."""


def loop_signature(request, sizes) -> tuple:
    """What must be equal for `request` (a GenerationRequest) with its `sizes` (request.sizes of the pipeline) to
    join another in one batch: the binned and output sizes, steps, guidance on/off and its scale and channels,
    η, decoding, caption length and whether it has a control."""
    scale = request.guidance_scale if request.guided else None  # unguided: the scale is never read
    return (sizes.height, sizes.width, sizes.out_size, request.num_inference_steps, request.guided, scale,
            request.guidance_channels, float(request.eta), request.decoded, request.max_sequence_length,
            request.control is None)


def check_batchable(requests, sizes):
    """A ValueError unless `requests` (with their `sizes`) are at least one and share one loop_signature."""
    if not requests:
        raise ValueError("a batch needs at least one request")
    signatures = {loop_signature(r, s) for r, s in zip(requests, sizes)}
    if len(signatures) > 1:
        raise ValueError(f"these requests cannot share one forward (size, steps, guidance, eta or control differ): "
                         f"{sorted(signatures, key=repr)}")
