"""Training: the pure steps (``steps``), the epoch loops (``loops``), a run (``train``),
many seeds as one program (``seeds``), devices (``parallel``), what a run prints (``console``)."""
