"""Model families: the only importers of a model library (Ultralytics), behind one ``ModelFamily`` protocol."""
