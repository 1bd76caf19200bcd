"""Data, losses, metrics and training loops for distilling learned ISPs."""
