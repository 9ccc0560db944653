"""The pyfunc model a registered version carries: stock MLflow loads it and it predicts.

``mlflow.pyfunc.load_model("models:/<name>@champion")`` gives a model whose ``predict`` takes a DataFrame
with an ``image`` column (encoded image bytes or file paths) and returns one row per detection.
Imported only when a model is logged or loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel


class DetectorModel(PythonModel):
    """Pyfunc flavour body: ONNX Runtime detector over encoded images.

    Input: a DataFrame with column ``image`` holding encoded image bytes (PNG/JPEG) or file paths.
    Output: one row per detection: ``image_index, class_id, class_name, confidence, x1, y1, x2, y2`` (pixels).
    """

    def load_context(self, context: Any) -> None:
        from tasks.runtimes.detectors import InferenceSettings, OnnxDetector

        cfg = context.model_config
        self.classes = list(cfg["classes"])
        settings = InferenceSettings(
            imgsz=int(cfg["imgsz"]),
            conf=float(cfg["conf"]),
            iou=float(cfg["iou"]),
            max_det=int(cfg["max_det"]),
            threads=int(cfg.get("threads", 2)),
        )
        self.detector = OnnxDetector(Path(context.artifacts["onnx"]), settings)

    def predict(self, context, model_input, params=None):  # untyped on purpose: MLflow validates hinted inputs
        import io

        import pandas as pd
        from PIL import Image, ImageOps

        from tasks.runtimes.detectors import predict_images

        rows = []
        for index, value in enumerate(model_input["image"]):
            source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
            with Image.open(source) as img:
                # upright (EXIF orientation) as the predict stage decodes (tasks.core.pixels; runtimes alone here)
                rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            (det,), _ = predict_images(self.detector, [rgb])
            for box, score, cls in zip(det.boxes_xyxy, det.confidence, det.class_id, strict=True):
                rows.append(
                    {
                        "image_index": index,
                        "class_id": int(cls),
                        "class_name": self.classes[int(cls)],
                        "confidence": float(score),
                        "x1": float(box[0]),
                        "y1": float(box[1]),
                        "x2": float(box[2]),
                        "y2": float(box[3]),
                    }
                )
        columns = ["image_index", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2"]
        return pd.DataFrame(rows, columns=columns)
