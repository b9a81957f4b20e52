"""The Slicer side of MammoPatch without Qt: dependency checks, the worker process, the run
and the scene building. Each module imports only the standard library, MRML (``slicer``'s
vtkMRML classes, present in Slicer and in PyPI's ``slicer-core``) and MammoPatchLib's
pure-Python contract, so the same code runs in Slicer and in the tests."""
