"""vdm_jax: Variational Diffusion Models (Kingma, Salimans, Poole & Ho, 2021) in JAX/Flax.

The pure functional core is importable on its own::

    from vdm_jax import diffusion, losses, likelihood, schedules, sampling, ode

Networks (`vdm_jax.nets`), the model module (`vdm_jax.model`), training (`vdm_jax.train`) and
data (`vdm_jax.data`) are imported explicitly by the code that needs them.
"""

__version__ = "0.1.0"
