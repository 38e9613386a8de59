"""Offline quality metrics for the Fashion-MNIST testbed (docs/TESTBED.md §5).

* :mod:`.classifier`: the small shipped Fashion-MNIST CNN (penultimate features for FD-cls / precision-recall).
* :mod:`.quality`: FD-cls (Frechet distance on the classifier's features, *not* FID), KID (unbiased kernel distance
  on the same features), precision/recall (k = 3), class-conditional accuracy.
* :mod:`.bootstrap`: bootstrap intervals of those figures and paired differences between two methods' image sets
  (does a method's quality differ from AR's beyond chance?).
* :mod:`.flatness`: top-1 probability, entropy and latent-neighbour mass of the target (TESTBED 6.5).
* :mod:`.evaluate`: all figures for a set of testbed weights (``specdec metrics``).
"""
