"""The retry schedule is pure: print or test it for any policy."""

import random

import fsm

policy = fsm.RetryPolicy(max_attempts=5, initial_delay=0.1, multiplier=2.0, max_delay=1.0)
assert policy.delays() == [0.1, 0.2, 0.4, 0.8]  # nominal: one wait per failure but the last
jittered = policy.delays(random.Random(0))  # drawn from the given generator
assert all(0 <= wait <= nominal for wait, nominal in zip(jittered, policy.delays(), strict=True))
print([round(wait, 3) for wait in jittered])
