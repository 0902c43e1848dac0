"""The sandbox: a simulated HestiaCP command set (`hestia_sim.py`) and the node installer and
read API around it (`node.py`), used by `puqdeploy sandbox`, `puqdeploy demo` and the tests."""
