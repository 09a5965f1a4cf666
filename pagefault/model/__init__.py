"""Models of kernel structures and behaviour, labelled modelled. Nothing here touches the machine."""
