"""Scout: watches Nightscout sites and phones people when their glucose is out of range."""
