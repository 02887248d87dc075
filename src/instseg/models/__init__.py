"""Model families and the parts they share."""
