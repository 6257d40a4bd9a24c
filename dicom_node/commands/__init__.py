"""The node's subcommands of `miadmark` (gateway, receive, queue), kept beside the node so that the
core package never imports dicom_node (miadmark.cli lists them by module path)."""
