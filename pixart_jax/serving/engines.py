"""The pipeline behind the server, loaded once: `run(jobs, on_step)` runs a batch of compatible jobs (parsing.Job)
in the worker thread and returns each job's PIL images, calling `on_step(jobs)` with the jobs that made a step.
JaxEngine runs a batch as one forward (PixArtPipeline.generate_batch); TorchEngine runs its jobs one after the
other (PixArtTorchPipeline)."""
import os

from pixart_jax.pipelines.control import ControlKind
from pixart_jax.pipelines.prompt_cache import PromptCache
from pixart_jax.samplers.registry import SamplerName, from_scheduler_config, sampler_name
from pixart_jax.serving.model_info import ModelInfo, adapter_name, bucket_sizes, model_name
from pixart_jax.serving.settings import Backend


class Engine:
    """What both backends share: the samplers by name, the LoRA adapters and the ModelInfo."""

    def __init__(self, settings, pipe, samplers, control_modes):
        self.pipe, self.samplers = pipe, samplers
        pipe.prompt_cache = PromptCache(settings.prompt_cache)  # repeated prompts skip T5
        self.loras = {}
        for path, scale in settings.loras:
            name = adapter_name(path, self.loras)
            pipe.load_lora_weights(path, adapter_name=name, scale=scale)
            self.loras[name] = scale
        self._active = tuple(self.loras.items())
        default = sampler_name(from_scheduler_config(os.path.join(settings.model, "scheduler")))
        self.info = ModelInfo(model_name(settings.model), settings.backend, bucket_sizes(self.cfg, self.vae_scale),
                              tuple(samplers), default, control_modes, dict(self.loras), self.cfg, self.vae_scale,
                              settings.limits.max_steps)

    @property
    def vae_scale(self):
        return self.pipe.vae_scale_factor  # both pipelines name it as diffusers does

    def _prepare(self, job):
        """The batch's sampler and adapter weights (a batch shares them: they are in the job's signature)."""
        self._set_sampler(self.samplers[job.scheduler])
        if job.lora_scales != self._active:
            names = [name for name, _ in job.lora_scales]
            self.pipe.set_adapters(names, [scale for _, scale in job.lora_scales])
            self._active = job.lora_scales


class JaxEngine(Engine):
    batched = True  # a batch of jobs is one forward

    def __init__(self, settings):
        from pixart_jax.pipelines.controlnet import PixArtControlNetPipeline
        from pixart_jax.pipelines.text_to_image import PixArtPipeline

        scheduler = os.path.join(settings.model, "scheduler")
        if settings.controlnet:
            pipe = PixArtControlNetPipeline.from_pretrained(settings.model, settings.controlnet, hed=settings.hed)
            modes = tuple(m.value for m in ControlKind if m != ControlKind.hed or settings.hed)
        else:
            pipe, modes = PixArtPipeline.from_pretrained(settings.model), ()
        super().__init__(settings, pipe, servable(lambda name: from_scheduler_config(scheduler, sampler=name)), modes)

    @property
    def cfg(self):
        return self.pipe.transformer.cfg

    def _set_sampler(self, sampler):
        self.pipe.sampler = sampler

    def run(self, jobs, on_step):
        self._prepare(jobs[0])
        return self.pipe.generate_batch([job.request for job in jobs], on_step=lambda: on_step(jobs))


class TorchEngine(Engine):
    batched = False  # its jobs run one after the other

    def __init__(self, settings):
        from pixart_jax.torch import PixArtTorchPipeline
        from pixart_jax.torch.pipeline import diffusers_scheduler

        scheduler = os.path.join(settings.model, "scheduler")
        pipe = PixArtTorchPipeline.from_pretrained(settings.model, device=settings.device or "cpu",
                                                   controlnet=settings.controlnet)
        modes = (ControlKind.canny.value, ControlKind.none.value) if settings.controlnet else ()
        super().__init__(settings, pipe, servable(lambda name: diffusers_scheduler(scheduler, name)), modes)
        self._on_step = None
        pipe.transformer.register_forward_hook(self._forward_done)  # one transformer forward per step

    def _forward_done(self, *_):
        if self._on_step is not None:
            self._on_step()

    @property
    def cfg(self):
        return self.pipe.cfg

    def _set_sampler(self, scheduler):
        self.pipe.scheduler = scheduler

    def run(self, jobs, on_step):
        self._prepare(jobs[0])
        images = []
        for job in jobs:
            self._on_step = lambda job=job: on_step([job])
            try:
                images.append(self.pipe.generate(job.request, progress=False).images)
            finally:
                self._on_step = None
        return images


ENGINES = {Backend.jax: JaxEngine, Backend.torch: TorchEngine}


def servable(build) -> dict:
    """{name: build(name)} of every SamplerName the model's scheduler config and the backend can take (build
    raises a ValueError for the others)."""
    samplers = {}
    for name in SamplerName:
        try:
            samplers[name.value] = build(name)
        except ValueError:
            continue
    return samplers


def load_engine(settings):
    """The engine of settings.backend with its model, ControlNet and adapters loaded."""
    return ENGINES[settings.backend](settings)
