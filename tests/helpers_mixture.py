"""The few-point data of the closed-form tests: three 2x2x1 images with 16 levels and
probabilities (0.5, 0.3, 0.2), and their exact denoiser (`point_masses.optimal_eps_fn`), under
which p(z_t) is the Gaussian mixture sum_k pi_k N(alpha_t x_k, sigma_t^2 I) at every t."""
import jax.numpy as jnp
import numpy as np

from vdm_jax import likelihood, point_masses

V = 16                               # vocabulary: levels per pixel
SHAPE = (2, 2, 1)
POINTS_INT = jnp.array([[0, 3, 7, 12], [15, 15, 0, 0], [5, 10, 5, 10]],
                       jnp.int32).reshape(3, *SHAPE)
PROBS = np.array([0.5, 0.3, 0.2])
POINTS = likelihood.encode(POINTS_INT, V)
LOG_PROBS = jnp.log(jnp.asarray(PROBS, jnp.float32))
EPS_FN = point_masses.optimal_eps_fn(POINTS, LOG_PROBS)
