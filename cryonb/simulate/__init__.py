"""Physics-based subtomogram simulator: PDB → potential in ice → crowded scene → tilt series with CTF,
MTF, exposure damage and noise (at an exact SNR, or the shot noise of a dose) → weighted back-projection
→ 32³ subtomograms (protein dark by default, :mod:`cryonb.simulate.polarity`), masks and metadata.

Two imaging paths: ``tiltseries`` (reference, torch-fourier-slice + torch-ctf) and ``fast`` (the
same linear chain as one 3-D Fourier filter, measured from the reference); tests prove them equal.
"""

from cryonb.simulate.config import POLARITIES, TILT_SCHEMES, SimulationConfig, check_snr
from cryonb.simulate.dataset import (
    COSNET_UNSEEN_CLASSES,
    DatasetRecipe,
    SubtomoDataset,
    cosnet_recipe,
    cssl_recipe,
    ensure_dataset,
    generate_dataset,
    load_dataset,
    load_maps,
    simulate_sample,
)
from cryonb.simulate.density import POTENTIAL_V_A2, MoleculeMap, molecule_map, peng_form_factor, potential_map, united_hydrogens
from cryonb.simulate.imaging import (
    Subtomogram,
    combine_at_snr,
    crop_center,
    exposure_filters,
    fast_filters,
    irfftn_center_crop,
    project_tilt_series,
    reconstruct_tilt_series,
    simulate_fast,
    simulate_tiltseries,
    tilt_matrices,
)
from cryonb.simulate.optics import (
    contrast_per_density,
    critical_exposure_e_per_a2,
    ctf_curve,
    ctf_of_k,
    ctf_zeros_inv_a,
    detector_names,
    electron_wavelength_a,
    envelope_of_k,
    exposure_weight_of_k,
    interaction_constant_per_v_a,
    mtf_of_k,
    shot_noise_variance,
    transfer_of_k,
    zero_loss_fraction,
)
from cryonb.simulate.polarity import MODEL_POLARITY, check_polarity, convert_polarity
from cryonb.simulate.scene import Placement, Scene, make_scene, random_rotation, rotate_map, rotate_molecule
from cryonb.simulate.tomogram import (
    SimulatedTomogram,
    place_particles,
    simulate_tomogram,
    tomogram_filters,
    write_coordinates_star,
)

__all__ = [
    "COSNET_UNSEEN_CLASSES", "DatasetRecipe", "MODEL_POLARITY", "MoleculeMap", "POLARITIES", "POTENTIAL_V_A2", "Placement",
    "Scene", "SimulatedTomogram", "SimulationConfig", "SubtomoDataset", "Subtomogram", "TILT_SCHEMES", "check_polarity",
    "check_snr", "combine_at_snr", "contrast_per_density", "convert_polarity", "cosnet_recipe", "critical_exposure_e_per_a2",
    "crop_center", "cssl_recipe", "ctf_curve", "ctf_of_k", "ctf_zeros_inv_a", "detector_names", "electron_wavelength_a",
    "ensure_dataset", "envelope_of_k", "exposure_filters", "exposure_weight_of_k", "fast_filters", "generate_dataset",
    "interaction_constant_per_v_a", "irfftn_center_crop", "load_dataset", "load_maps", "make_scene", "molecule_map",
    "mtf_of_k", "peng_form_factor", "place_particles", "potential_map", "project_tilt_series", "random_rotation",
    "reconstruct_tilt_series", "rotate_map", "rotate_molecule", "shot_noise_variance", "simulate_fast", "simulate_sample",
    "simulate_tiltseries", "simulate_tomogram", "tilt_matrices", "tomogram_filters", "transfer_of_k", "united_hydrogens",
    "write_coordinates_star", "zero_loss_fraction",
]
