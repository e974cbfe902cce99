"""What the kernels' tests read from a layout after its launches, shared by the interpreter and GPU tests."""


def layout_workspaces(layout, kinds=None):
    """(key, workspace) of every launch configuration cached on ``layout``'s parts (``kernel_cache`` metadata:
    split columns' fp32 sums and counts, row segments' slots and counters); only keys ending in one of ``kinds``
    where given."""
    return [(key, w) for part in layout.parts for meta in part.kernel_cache.values()
            for key, w in meta.workspaces.items() if kinds is None or key[-1] in kinds]
