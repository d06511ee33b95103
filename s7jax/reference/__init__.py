"""The PyTorch side: the spec's networks built in PyTorch
(``torch_reference``) and the referee that trains them with the study's
recipe (``referee``). PyTorch is imported only when they are used."""
