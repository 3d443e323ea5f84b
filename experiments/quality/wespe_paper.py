"""Quality benchmark preset: the faithful WESPE paper preset (official generator and init, colour and texture
GANs, content 1 / adversarial 5e-3 / TV 10) at the same laptop scale as wespe_plus, for comparison."""

from wespe.config import laptop_scale, wespe_paper


def get_config():
    return laptop_scale(wespe_paper())
