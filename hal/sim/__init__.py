"""The simulated plant and the HAL roles it plays."""
