"""CUT (Park et al., ECCV 2020): unpaired translation with PatchNCE, the paper's 0 %-paired baseline.

The generator never sees an aligned T1ce: its discriminator compares synthesized T1ce with real T1ce slices
of OTHER subjects (the trainer's target-domain stream), unconditionally::

    L_G = l_adv(D(G(x)), real) + l_nce * PatchNCE(E(G(x)), sg(E(x))) + l_nce * PatchNCE(E(G(y)), sg(E(y)))

the last term being CUT's identity NCE (y, a real T1ce, fed to every modality encoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ds3kit.losses import PatchNCELoss, adversarial_loss
from ds3kit.methods.base import Method, item


@dataclass
class CUTOptions:
    lambda_adv: float = 1.0
    lambda_nce: float = 1.0
    nce_identity: bool = True
    nce_patches: int = 256
    nce_temperature: float = 0.07
    gan_mode: str = "lsgan"

    #: One line per option for the recipe's --help.
    HELP: ClassVar[dict[str, str]] = {
        "lambda_adv": "weight of the adversarial term",
        "lambda_nce": "weight of PatchNCE between the input and the synthesis",
        "nce_identity": "CUT's identity PatchNCE on real T1ce passed through the generator",
        "nce_patches": "PatchNCE locations sampled per image and layer",
        "nce_temperature": "PatchNCE temperature tau",
        "gan_mode": "adversarial loss: lsgan, bce or hinge",
    }


class CUT(Method):
    uses_paired = True
    uses_unpaired = True
    target_domain_only = True

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        options: CUTOptions,
        *,
        lr: float,
        betas: tuple[float, float],
    ) -> None:
        super().__init__()
        self.options = options
        self.generator = generator
        self.discriminator = discriminator  # unconditional: judges a T1ce slice alone
        self.patch_nce = PatchNCELoss(
            generator.feature_channels, num_patches=options.nce_patches, temperature=options.nce_temperature
        )
        self.add_optimizer("generator", [*generator.parameters(), *self.patch_nce.parameters()], lr=lr, betas=betas)
        self.add_optimizer("discriminator", discriminator.parameters(), lr=lr, betas=betas)

    def generators(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def discriminators(self) -> dict[str, nn.Module]:
        return {"generator": self.discriminator}

    def training_step(
        self, paired: Mapping[str, Tensor] | None, unpaired: Mapping[str, Tensor] | None
    ) -> dict[str, float]:
        assert paired is not None and unpaired is not None
        o = self.options
        inputs, real_target = unpaired["inputs"], paired["target"]
        prediction, input_features = self.generator.forward_with_features(inputs)
        terms = {
            "adv": o.lambda_adv * adversarial_loss(self.discriminator(prediction), True, mode=o.gan_mode),
            "nce": o.lambda_nce * self.patch_nce(self.generator.encode(prediction), input_features),
        }
        if o.nce_identity:
            identity, target_features = self.generator.forward_with_features(
                real_target.expand(-1, inputs.shape[1], -1, -1)
            )
            terms["nce_identity"] = o.lambda_nce * self.patch_nce(self.generator.encode(identity), target_features)
        self.update("generator", terms)
        logs = {name: item(value) for name, value in terms.items()}
        logs.update(
            self.update_discriminator(
                "discriminator", self.discriminator, (real_target,), (prediction,), mode=o.gan_mode
            )
        )
        return logs
