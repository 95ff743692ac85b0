"""Label configs the backend tests use."""

BRUSH_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="duck"/></BrushLabels></View>"""
POLYGON_CONFIG = """<View><Image name="img" value="$picture"/>
<PolygonLabels name="poly" toName="img"><Label value="cat"/></PolygonLabels></View>"""
BITMASK_CONFIG = """<View><Image name="image" value="$image" smoothing="false"/>
<BitmaskLabels name="bm" toName="image"><Label value="cat"/></BitmaskLabels></View>"""
INTERACTIVE_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>
<RectangleLabels name="box" toName="image" smart="true"><Label value="cat"/></RectangleLabels></View>"""
SEQUENCE_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="car"/></BrushLabels></View>"""
VIDEO_CONFIG = """<View><Video name="video" value="$video" framerate="25"/>
<VideoRectangle name="box" toName="video"/>
<Labels name="videoLabels" toName="video"><Label value="car"/><Label value="dog"/></Labels></View>"""


def brush_config(*labels: str) -> str:
    """One image ``$image`` with a BrushLabels control ``tag`` over ``labels``."""
    tags = "".join(f'<Label value="{label}"/>' for label in labels)
    brush = f'<BrushLabels name="tag" toName="image">{tags}</BrushLabels>'
    return f'<View><Image name="image" value="$image"/>{brush}</View>'
