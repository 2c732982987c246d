"""Our own small tf.data layer for RLDS datasets (replacing the unpublished `dlimp`) and the LIBERO transforms."""
