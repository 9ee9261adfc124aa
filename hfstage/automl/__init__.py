"""``hfstage auto`` (issue #35), being built: the budget side so far (``budget.py``): what a unit of work will
cost, whether it can finish in the time left, and stopping a run at the deadline after its current stage. (Not
``hfstage/auto/``: ``hfstage.auto`` is to be the Python function, as ``hfstage.search`` is.)"""
