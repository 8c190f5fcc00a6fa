"""Test tools that are not part of the shipped server: the firmware-faithful simulated device
(`harness.devsim`) and fake network peers speaking real wire formats (`harness.fakes`).

Used by the tests and by the benchmark (`bench/`); the server never imports this package."""
