"""The built-in demo corpus's generator: small bilingual synthetic clips on which only fusion can be right.

plan.py draws the labels, splits and transcripts, face.py renders the video, voice.py the audio, generate.py
writes the corpus to disk; the adapter extract/datasets/demo.py generates it there the first time (from a seed,
byte-identical on every run) and then loads it like any other corpus. Each clip is a real mp4 of 2-3 s: a drawn
face whose expression unfolds over the clip, a voice-like track (harmonic source with a pitch contour, syllable rhythm, breath noise) and an English or
Chinese transcript. Labels: the 7 MELD emotions (task "emotion") and a sentiment score in [-1, 1] that agrees
with the emotion.

Why each modality alone is ambiguous: every modality splits the 7 emotions into 3 groups of look-alikes and, for
every clip, renders a random member of the true emotion's group (the true one or a confusable one), so on its own
it names the group but carries no information about the emotion within it:

    emotion    voice                    face                            text
    neutral    calm   {neu, sad, dis}   relaxed  {neu, joy}             plain    {neu, sur, joy}
    surprise   lively {sur, joy}        startled {sur, fear}            plain
    fear       tense  {fear, ang}       startled                        worried  {fear, sad}
    sadness    calm                     frowning {sad, dis, ang}        worried
    joy        lively                   relaxed                         plain
    disgust    calm                     frowning                        hostile  {dis, ang}
    anger      tense                    frowning                        hostile

The three groups together differ for every emotion, so their intersection names it; every pair of modalities
still confuses at least two emotions. With balanced classes one modality alone can be right for at most 3 clips
in 7 (the best guess inside its group), two for at most 6 in 7, the three together for all of them.
Clips carry no dialogue context. labels.csv records, per clip, the emotion each modality shows.
"""
