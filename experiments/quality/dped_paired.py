"""Quality benchmark preset: the supervised upper reference. DPED's paired mode (each degraded training half with
its clean original) at the same laptop scale, with the same generator as wespe_plus (identity-initialised
residual with the global colour path, EMA), so the gap to wespe_plus is what pairing buys.

Loss weights: the official code's content 10 / colour 0.5 with the texture adversary at 0.05 instead of 1 and TV
at 10 instead of 2000: with the official adversarial weight the summed 2-way-softmax term dominated and the
generator loss went negative (16.0 dB in the first-wave trial), and TV 2000 on an identity-initialised G
smooths away the detail the content loss asks for.
"""

from wespe.config import dped_code, laptop_scale


def get_config():
    c = dped_code()
    c.data.paired = True
    c.generator.update(dict(init="he", output="residual", global_color="affine"))
    c.optimizer.global_color_lr_scale = 100.0
    c.ema_decay = 0.999  # 0.99 after laptop_scale
    c.weights.update(dict(texture=0.05, tv=10.0))
    return laptop_scale(c)
