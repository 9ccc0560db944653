"""The synthetic world and the annotator simulator: demo and test fixtures the product never imports."""
