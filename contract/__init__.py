"""The serving contract (`mambaserve.contract`): model and tensor names, dtypes, dims, limits, the sample
rate. The bottom layer: it imports nothing else of mambaserve, and everything above takes names from it.

    from mambaserve.contract import spec
"""
