"""One loader per way a model arrives; :func:`export.load.load_model` picks one and finishes the job."""
