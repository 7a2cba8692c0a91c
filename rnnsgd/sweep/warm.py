def warm_up():
    import torch, mlflow, ray.tune, rnnsgd.train  # noqa
    from mlflow import MlflowClient  # noqa
