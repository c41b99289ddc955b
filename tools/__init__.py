"""Tools beside the scripts: result plots, ERF maps, the GPU check, generated tables and model configs."""
