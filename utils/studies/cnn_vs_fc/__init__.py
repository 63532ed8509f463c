"""Task 1's own analysis (FC vs CNN on MNIST and CIFAR-10, the regularisation ablation, the
pixel-shuffle control): measurements on trained models (:mod:`.probes`), numbers from run records
(:mod:`.numbers`), the task's figures (:mod:`.figures`) and one call's state (:mod:`.study`)."""
