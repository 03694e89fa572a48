"""Use a trained model on new scans: the model bundle (export, safe loading), the one inference path
(predict), ONNX export. Imports data, models and explain; nothing below imports it."""
