"""The demo's DreamBooth-LoRA concept (pixart_jax/demo/lora_concept.py): the checker reads the concept colour only
when told of it, and never at the expense of the dataset's colours; the instance set and the concept prompts."""
import numpy as np

from pixart_jax.demo import checker, lora_concept, shapes


def test_the_checker_reads_the_concept_colour_only_when_told_of_it():
    attributes = lora_concept.instance_attributes(9)
    renders = np.stack([shapes.render(a, colours=lora_concept.COLOURS) for a in attributes])
    assert checker.attribute_percentages(renders, attributes, lora_concept.COLOURS)["aligned"] == 100
    assert {checker.detect(image).colour for image in renders} <= {"red", "blue"}  # magenta is no dataset colour
    usual = [p.attributes for p in shapes.evaluation_set()]
    renders = np.stack([shapes.render(a) for a in usual])
    assert checker.attribute_percentages(renders, usual, lora_concept.COLOURS)["aligned"] == 100


def test_instances_and_concept_prompts():
    attributes = lora_concept.instance_attributes(9)
    assert {a.position for a in attributes} == set(shapes.POSITIONS) and {a.kind for a in attributes} == set(
        shapes.KINDS) and {a.size for a in attributes} == set(shapes.SIZES)
    assert shapes.caption(attributes[0]) == "a small sks circle at the top left"
    prompts = shapes.evaluation_set()
    concept = lora_concept.concept_prompts(prompts)
    assert [p.seed for p in concept] == [p.seed for p in prompts]
    assert all(c.caption == p.caption.replace(f" {p.attributes.colour} ", " sks ") for c, p in zip(concept, prompts))
    assert all(c.attributes == p.attributes._replace(colour="sks") for c, p in zip(concept, prompts))
    classes = lora_concept.class_prompts([shapes.caption(a) for a in shapes.attribute_space()], 16)
    assert len({p.caption for p in classes}) == 16 and len({p.seed for p in classes}) == 16
