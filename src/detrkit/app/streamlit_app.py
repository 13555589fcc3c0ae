"""detrkit web app: buildings, GSD and built-up area of an uploaded aerial or satellite image.

Run with ``detrkit app [--port P] [--model RUN]``. The model is the ``--model`` argument, else
``$DETRKIT_APP_MODEL``, else the shipped default model (trained on real Accra drone tiles and
generated scenes). The page names the model, its training data and measured accuracy under the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import streamlit as st

from detrkit.aerial.predict import AerialPredictor
from detrkit.app.logic import (
    UPLOAD_TYPES,
    analyse,
    format_area,
    format_area_short,
    model_accuracy_text,
    save_upload,
)
from detrkit.errors import DetrkitError

st.set_page_config(page_title="detrkit · built-up area", page_icon="🏠", layout="wide")


def _model_arg() -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.model or os.environ.get("DETRKIT_APP_MODEL") or None


@st.cache_resource(show_spinner="Loading the model (the first start may train a small one)...")
def load_predictor(model: str | None) -> AerialPredictor:
    return AerialPredictor.from_checkpoint(model) if model else AerialPredictor.default()


st.title("Built-up area from aerial and satellite images")
st.caption("Upload an image: detrkit segments buildings, measures their area in m² and counts them.")

with st.sidebar:
    st.header("Settings")
    model_default = _model_arg() or ""
    model = st.text_input(
        "Model run folder or checkpoint",
        value=model_default,
        help="Leave empty for the shipped default model (real Accra tiles + generated scenes).",
    )
    mode = st.radio(
        "Ground sample distance (GSD)",
        ["Auto-detect", "Metres per pixel", "Web Mercator zoom + latitude"],
        help="Give the GSD if you know it (metres per pixel, or the Web Mercator zoom of a map tile): "
        "areas are then exact. Auto: from the GeoTIFF georeference, else estimated by the model "
        "(with an uncertainty).",
    )
    gsd = zoom = lat = None
    if mode == "Metres per pixel":
        gsd = st.number_input(
            "GSD (m/pixel)", min_value=0.01, max_value=100.0, value=0.3, step=0.05, format="%.3f"
        )
    elif mode == "Web Mercator zoom + latitude":
        zoom = st.number_input("Zoom level", min_value=0, max_value=23, value=18, step=1)
        lat = st.number_input(
            "Latitude (degrees)", min_value=-85.0, max_value=85.0, value=48.85, format="%.5f"
        )
    opacity = st.slider("Mask opacity", 0.0, 1.0, 0.45, 0.05)

uploaded = st.file_uploader("Image (PNG, JPEG or GeoTIFF)", type=UPLOAD_TYPES)
if uploaded is None:
    st.info(
        "Upload an image to start. If you know its ground sample distance (metres per pixel, or the "
        "zoom level of a map tile), set it first in the sidebar: the model's own GSD estimate is "
        "uncertain. No image at hand? `detrkit aerial synth --out DIR` generates some."
    )
    st.stop()

try:
    predictor = load_predictor(model.strip() or None)
    upload = save_upload(uploaded.name, uploaded.getvalue())
    key = (upload.digest, model, mode, gsd, zoom, lat)
    if st.session_state.get("result_key") != key:
        with st.spinner(f"Segmenting {upload.width} x {upload.height} px..."):
            out_dir = Path(tempfile.gettempdir()) / "detrkit-app" / f"out-{upload.digest}"
            st.session_state["result"] = analyse(predictor, upload, out_dir, gsd=gsd, zoom=zoom, lat=lat)
            st.session_state["result_key"] = key
    result = st.session_state["result"]
except DetrkitError as err:
    st.error(str(err))
    st.stop()

s = result.summary
g = s["gsd"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Built-up area", format_area_short(s["built_area_m2"]), help=format_area(s["built_area_m2"]))
c2.metric("Built-up share", f"{s['built_percent']:.2f} %")
c3.metric("Buildings", f"{s['building_count']}")
c4.metric("GSD", f"{g['metres_per_pixel']:.3f} m/px", help=g["detail"])
st.caption(
    f"GSD source: **{g['source']}** ({g['detail']}); model estimate {s['model_gsd_m']:.3f} m/px; "
    f"{s['tiles']} tiles in {s['seconds']:.1f} s; image area {format_area(s['image_area_m2'])}; "
    f"{s['area_text']}."
)
if s.get("gsd_warning"):
    st.warning(s["gsd_warning"])
card = s["model_card"]
st.caption(f"Model: **{card['name']}**, trained on {card['trained_on']}. {model_accuracy_text(card)}")

left, right = st.columns(2)
left.image(result.overlay(opacity), caption="Buildings (cyan) over the image", width="stretch")
right.image(result.probability, caption="Building probability (dark: 0, bright: 1)", width="stretch")

st.subheader("Buildings")
if result.buildings:
    rows = [
        {
            "id": b["id"],
            "area (m²)": None if b["area_m2"] is None else round(b["area_m2"], 1),
            "perimeter (m)": None if b["perimeter_m"] is None else round(b["perimeter_m"], 1),
            "centroid x": round(b["centroid_x"], 2),
            "centroid y": round(b["centroid_y"], 2),
        }
        for b in sorted(result.buildings, key=lambda b: -(b["area_m2"] or 0))
    ]
    st.dataframe(rows, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(rows)))
else:
    st.write("No buildings found.")

stem = Path(upload.name).stem
d1, d2 = st.columns(2)
d1.download_button(
    "Download GeoJSON", result.geojson, file_name=f"{stem}_buildings.geojson", mime="application/geo+json"
)
d2.download_button("Download CSV", result.csv, file_name=f"{stem}_buildings.csv", mime="text/csv")
